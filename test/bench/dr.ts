/**
 * Disaster recovery (docs/BENCHMARKS.md, "Disaster recovery").
 * - RPO: BENCH_DR_ROUNDS (default 10) drills of test/helpers/dr-drill.ts on a three-node auto
 *   cluster (real etcd) backing up to the fake S3 with managed Litestream: writes, every node
 *   and its litestream SIGKILLed, data deleted, one node restored on boot, the others copying
 *   from it. The RPO of a round is the span of acknowledged writes that did not come back.
 * - Restore speed: a database of BENCH_RESTORE_MIB (default 1024) MiB of random rows, backed up
 *   by litestream to the fake S3 and to a file replica, then restored with restoreBackup() (the
 *   code behind `nebulagc-server restore`, integrity_check and checksum included). The file
 *   replica is the baseline, in the same run.
 * BENCH_DR picks the parts (rpo, restore, bootstrap; all by default).
 * - New replica: a master whose database holds BENCH_BOOTSTRAP_MIB (default 256) MiB, backed up
 *   by managed Litestream to a file target; the time from starting a new replica to it
 *   following, by a snapshot streamed from the master (the baseline) and by
 *   NEBULAGC_BOOTSTRAP_FROM_BACKUP, in the same run.
 */
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import { litestreamBin, writeLitestreamConfig } from '../../server/src/backup/litestream-config.js';
import { restoreBackup } from '../../server/src/backup/restore.js';
import type { BackupConfig } from '../../server/src/config.js';
import { startFakeS3, type FakeS3 } from '../fakes/fake-s3.js';
import { startAutoCluster } from '../helpers/auto-cluster.js';
import { clusterDir, startNode, waitUntil } from '../helpers/cluster.js';
import { health } from '../helpers/probes.js';
import { disasterRound } from '../helpers/dr-drill.js';
import { startEtcd } from '../helpers/etcd.js';
import { isEntryPoint } from './entry.js';
import { fmt, printTable, quantile } from './harness.js';

const ROUNDS = Number(process.env.BENCH_DR_ROUNDS ?? 10);
const RESTORE_MIB = Number(process.env.BENCH_RESTORE_MIB ?? 1024);
const SYNC_INTERVAL_MS = 1000;
const BOOTSTRAP_MIB = Number(process.env.BENCH_BOOTSTRAP_MIB ?? 256);
/** Which parts to run: any of rpo, restore, bootstrap (comma-separated). */
const PARTS = new Set((process.env.BENCH_DR ?? 'rpo,restore,bootstrap').split(','));

const s3Backup = (s3: FakeS3, bucket: string, prefix: string): BackupConfig => ({
  url: `s3://${bucket}/${prefix}`,
  endpoint: s3.endpoint,
  region: s3.region,
  syncInterval: '1s',
  bin: undefined,
  accessKeyId: s3.accessKeyId,
  secretAccessKey: s3.secretAccessKey,
  restoreOnBoot: false,
  bootstrapFromBackup: false,
});

async function rpoBench(s3: FakeS3): Promise<string[][]> {
  s3.bucket('bench-dr');
  const etcd = await startEtcd();
  const cluster = await startAutoCluster('bench-dr', { kind: 'etcd', endpoints: etcd.endpoint }, {
    env: {
      NEBULAGC_LITESTREAM_URL: 's3://bench-dr/cluster',
      NEBULAGC_LITESTREAM_ENDPOINT: s3.endpoint,
      AWS_ACCESS_KEY_ID: s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
      NEBULAGC_LITESTREAM_SYNC_INTERVAL: `${SYNC_INTERVAL_MS}ms`,
      NEBULAGC_RESTORE_ON_BOOT: 'true',
      NEBULAGC_LOG_LEVEL: 'info',
    },
  });
  const nodes = [...cluster.members];
  const rpo: number[] = [];
  const serve: number[] = [];
  let acked = 0;
  let lost = 0;
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const r = await disasterRound(cluster, nodes, `bench-dr-${round}`, SYNC_INTERVAL_MS + 2000);
      rpo.push(r.rpoMs);
      serve.push(r.restoreMs);
      acked += r.acked;
      lost += r.lost;
      console.log(`round ${round + 1}: ${r.acked} acknowledged, ${r.lost} lost, RPO ${fmt(r.rpoMs)} ms, restored and master in ${fmt(r.restoreMs)} ms`);
    }
  } finally {
    await cluster.remove();
    await etcd.stop();
  }
  return [[String(ROUNDS), fmt(quantile(rpo, 0.5)), fmt(quantile(rpo, 0.9)), fmt(Math.max(...rpo)), `${lost} of ${fmt(acked)}`, fmt(quantile(serve, 0.5)), fmt(Math.max(...serve))]];
}

/** Runs litestream replicate on `db` until its first snapshot is uploaded, then stops it. */
async function backUp(db: string, backup: BackupConfig, config: string): Promise<number> {
  writeLitestreamConfig(config, db, backup);
  const started = performance.now();
  const child = spawn(litestreamBin(backup), ['replicate', '-config', config, '-no-expand-env'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = new Promise<void>((resolve, reject) => {
    for (const s of [child.stdout!, child.stderr!])
      createInterface({ input: s }).on('line', (l) => {
        if (l.includes('"snapshot written"')) resolve();
        if (l.includes('"level":"ERROR"')) reject(new Error(l));
      });
    child.once('exit', (code) => reject(new Error(`litestream exited ${code}`)));
  });
  try {
    await done;
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  return performance.now() - started;
}

async function restoreBench(s3: FakeS3): Promise<string[][]> {
  const dir = clusterDir('bench-restore');
  try {
    const source = path.join(dir.root, 'source.db');
    const db = new Database(source);
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)');
    db.exec(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${RESTORE_MIB * 256}) INSERT INTO blobs (body) SELECT randomblob(4000) FROM c`);
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const bytes = statSync(source).size;
    s3.bucket('bench-restore');
    const targets: [string, BackupConfig][] = [
      ['file replica', { ...s3Backup(s3, 'unused', 'x'), url: `file://${path.join(dir.root, 'file-backup')}`, endpoint: undefined, accessKeyId: undefined, secretAccessKey: undefined }],
      ['fake S3', s3Backup(s3, 'bench-restore', 'big')],
    ];
    const rows: string[][] = [];
    let baseline = 0;
    for (const [label, backup] of targets) {
      const upload = await backUp(source, backup, path.join(dir.root, `${label.replace(/\W/g, '')}.yml`));
      const output = path.join(dir.root, `restored-${label.replace(/\W/g, '')}.db`);
      const r = await restoreBackup({ backup, dbPath: source, output });
      const mibs = bytes / 1048576 / (r.durationMs / 1000);
      baseline ||= r.durationMs;
      rows.push([label, fmt(bytes / 1048576), fmt(upload / 1000, 1), fmt(r.durationMs / 1000, 1), fmt(mibs, 0), (r.durationMs / baseline).toFixed(2)]);
    }
    return rows;
  } finally {
    dir.remove();
  }
}

async function bootstrapBench(): Promise<string[][]> {
  const dir = clusterDir('bench-bootstrap');
  const backup = { NEBULAGC_LITESTREAM_URL: `file://${path.join(dir.root, 'backup')}`, NEBULAGC_LOG_LEVEL: 'warn' };
  try {
    // The schema first, then the bulk straight into the file while no server runs.
    let master = await startNode('m', dir.root, { NEBULAGC_HA_MODE: 'master', ...backup });
    await master.stop();
    const db = new Database(master.dbPath);
    db.exec('CREATE TABLE bench_blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)');
    db.exec(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${BOOTSTRAP_MIB * 256}) INSERT INTO bench_blobs (body) SELECT randomblob(4000) FROM c`);
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const bytes = statSync(master.dbPath).size;
    master = await master.restart();
    const since = Date.now();
    await waitUntil(async () => Date.parse((await health(master)).backup?.last_success_at ?? '0') > since, 300_000, 500);
    const rows: string[][] = [];
    let baseline = 0;
    for (const [label, env] of [
      ['snapshot from the master', {}],
      ['backup (file target), then the log', { ...backup, NEBULAGC_BOOTSTRAP_FROM_BACKUP: 'true' }],
    ] as const) {
      const started = performance.now();
      const r = await startNode(`r-${rows.length}`, dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, ...env, NEBULAGC_LOG_LEVEL: 'info' });
      await waitUntil(async () => (await health(r)).ha_state === 'replica.following', 600_000, 100);
      const ms = performance.now() - started;
      const how = /bootstrapped from the backup/.test(r.output()) ? 'from the backup' : 'by snapshot';
      await r.stop();
      baseline ||= ms;
      rows.push([label, fmt(bytes / 1048576), how, fmt(ms / 1000, 1), fmt(bytes / 1048576 / (ms / 1000)), (ms / baseline).toFixed(2)]);
    }
    await master.stop();
    return rows;
  } finally {
    dir.remove();
  }
}

export async function runDrBench(): Promise<void> {
  const s3 = await startFakeS3();
  try {
    if (PARTS.has('rpo')) {
      console.log(`\nDisaster recovery: ${ROUNDS} drills (3 nodes, etcd, managed Litestream to the fake S3, sync interval ${SYNC_INTERVAL_MS} ms)`);
      printTable(['rounds', 'RPO p50 ms', 'RPO p90 ms', 'RPO max ms', 'acknowledged writes lost', 'restored and master p50 ms', 'max ms'], await rpoBench(s3));
    }
    if (PARTS.has('restore')) {
      console.log(`\nRestore of a ${RESTORE_MIB} MiB database (restoreBackup: litestream restore, integrity_check, checksum)`);
      printTable(['from', 'MiB', 'first upload s', 'restore s', 'MiB/s', 'ratio to file'], await restoreBench(s3));
    }
    if (PARTS.has('bootstrap')) {
      console.log(`\nA new replica of a ${BOOTSTRAP_MIB} MiB database: start to following`);
      printTable(['bootstrap', 'MiB', 'how it went', 'seconds', 'MiB/s', 'ratio to snapshot'], await bootstrapBench());
    }
  } finally {
    await s3.stop();
  }
}

if (isEntryPoint(import.meta.url)) await runDrBench();
