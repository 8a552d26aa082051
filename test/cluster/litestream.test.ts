import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { validBundle } from '../helpers/bundle.js';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { call } from '../helpers/server.js';

const LITESTREAM = path.join(path.dirname(createRequire(import.meta.url).resolve('@flydotio/litestream-linux-x64/package.json')), 'litestream');
const OP = { authorization: 'Bearer test-admin-token-0123456789abcdef0123456789abcdef' };
const FORCED_CHECKPOINT_BYTES = 40 * 1024 * 1024;

function walSalts(dbPath: string): string {
  const fd = openSync(`${dbPath}-wal`, 'r');
  try {
    const b = Buffer.alloc(8);
    readSync(fd, b, 0, 8, 16);
    return b.toString('hex');
  } finally {
    closeSync(fd);
  }
}

const walSize = (dbPath: string): number => {
  try {
    return statSync(`${dbPath}-wal`).size;
  } catch {
    return 0;
  }
};

function pages(file: string): Map<number, Buffer> {
  const db = new Database(file, { readonly: true });
  try {
    return new Map((db.prepare('SELECT pgno, data FROM sqlite_dbpage').all() as { pgno: number; data: Buffer }[]).map((r) => [r.pgno, r.data]));
  } finally {
    db.close();
  }
}

/**
 * DESIGN §3's stall trap, for real: litestream replicates the master's database (a `file`
 * replica), writes its own tables and, once the WAL passes ~40 MB, forces a RESTART checkpoint
 * that must wait for our pinned reader. Writes must neither fail nor stall, and the replica
 * must stay identical throughout.
 */
describe('replication alongside a real litestream process', { timeout: 240_000 }, () => {
  const dir = clusterDir('litestream');
  let master: ServerProcess;
  let replica: ServerProcess;
  let litestream: ChildProcess;
  let litestreamLog = '';
  const replicaDir = path.join(dir.root, 'litestream-replica');

  before(async () => {
    master = await startNode('master', dir.root, {
      NEBULAGC_HA_MODE: 'master',
      NEBULAGC_WAL_CHECKPOINT_BYTES: '0',
      NEBULAGC_MAX_BUNDLE_BYTES: String(8 * 1024 * 1024),
      NEBULAGC_LOG_LEVEL: 'warn',
    });
    replica = await startNode('replica', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, NEBULAGC_LOG_LEVEL: 'warn' });
    litestream = spawn(LITESTREAM, ['replicate', master.dbPath, `file://${replicaDir}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (b: Buffer): void => {
      litestreamLog = (litestreamLog + b.toString()).slice(-50_000);
    };
    litestream.stdout!.on('data', keep);
    litestream.stderr!.on('data', keep);
  });

  after(async () => {
    litestream?.kill('SIGKILL');
    await replica?.stop();
    await master?.stop();
    dir.remove();
  });

  it('passes the forced checkpoint with no failed or stalled write, and stays identical', async () => {
    const t = await call(master.url, 'POST', '/api/v1/tenants', { headers: OP, json: { name: 'ls' } });
    const c = await call(master.url, 'POST', '/api/v1/clusters', { headers: OP, json: { tenant_id: t.body.id, name: 'ls' } });
    const clusterId = c.body.cluster.id as string;
    const latencies: number[] = [];
    const failures: string[] = [];
    let n = 0;
    const smallWrite = async (): Promise<void> => {
      const started = performance.now();
      const r = await call(master.url, 'POST', '/api/v1/nodes', { headers: OP, json: { cluster_id: clusterId, name: `n${n++}` } });
      latencies.push(performance.now() - started);
      if (r.status !== 201) failures.push(`${r.status} ${JSON.stringify(r.body)}`);
    };

    // Grow the WAL past litestream's forced-checkpoint threshold with multi-MiB bundles,
    // interleaved with small writes whose latency we watch.
    let initialSalts: string | undefined;
    while (walSize(master.dbPath) < FORCED_CHECKPOINT_BYTES + 4 * 1024 * 1024) {
      const up = await call(master.url, 'POST', `/api/v1/config/bundle?cluster_id=${clusterId}`, {
        headers: OP,
        raw: await validBundle([{ name: 'blob.bin', content: randomBytes(3 * 1024 * 1024) }]),
      });
      if (up.status !== 201) failures.push(`bundle ${up.status} ${JSON.stringify(up.body)}`);
      for (let i = 0; i < 5; i++) await smallWrite();
      initialSalts ??= walSalts(master.dbPath);
      if (walSalts(master.dbPath) !== initialSalts) break;
    }
    // Keep writing until litestream's RESTART checkpoint lets the WAL start a new generation.
    const restarted = await waitUntil(async () => {
      await smallWrite();
      return walSalts(master.dbPath) !== initialSalts;
    }, 60_000, 20);
    assert.ok(restarted, `the WAL never restarted (size ${walSize(master.dbPath)}); litestream:\n${litestreamLog.slice(-2000)}`);
    for (let i = 0; i < 50; i++) await smallWrite();

    assert.deepEqual(failures, [], 'no write failed (SQLITE_BUSY would be a 5xx)');
    const max = Math.max(...latencies);
    // The trap stalls writes for the whole 5 s busy timeout; DESIGN measured 64 ms without it.
    // Figures for docs/BENCHMARKS.md are printed; the bound only catches the stall.
    const resyncs = master.output().split('\n').filter((l) => l.includes('checkpointed unseen')).length;
    console.log(`litestream run: ${resyncs} full-page resyncs, ${latencies.length} small writes, max ${max.toFixed(1)} ms, p99 ${latencies.sort((a, b) => a - b)[Math.floor(latencies.length * 0.99)]!.toFixed(1)} ms`);
    assert.ok(max < 1000, `a write stalled for ${max.toFixed(0)} ms`);

    const masterStatus = await call(master.url, 'GET', '/cluster/status', { headers: OP });
    const target = masterStatus.body.position.txid as number;
    const caughtUp = await waitUntil(async () => (await call(replica.url, 'GET', '/health')).body.position?.txid >= target, 30_000);
    assert.ok(caughtUp, 'replica caught up');
    await waitUntil(async () => (await call(master.url, 'GET', '/cluster/status', { headers: OP })).body.position.txid === (await call(replica.url, 'GET', '/health')).body.position?.txid, 10_000);
    litestream.kill('SIGTERM');
    await new Promise((r) => litestream.once('exit', r));
    await replica.stop();
    await master.stop();

    const m = pages(master.dbPath);
    const r = pages(replica.dbPath);
    assert.equal(r.size, m.size, 'same number of pages');
    for (const [pgno, data] of m) {
      const other = r.get(pgno);
      const at = other ? [...data.keys()].filter((i) => data[i] !== other[i]) : [];
      assert.ok(other?.equals(data), `page ${pgno} differs at bytes ${at.slice(0, 20).join(',')}\nmaster log:\n${master.output().slice(-3000)}`);
    }
    const check = new Database(replica.dbPath, { readonly: true });
    assert.equal(check.pragma('integrity_check', { simple: true }), 'ok');
    check.close();

    const restored = path.join(dir.root, 'restored.db');
    const restore = spawnSync(LITESTREAM, ['restore', '-o', restored, `file://${replicaDir}`], { encoding: 'utf8' });
    assert.equal(restore.status, 0, restore.stderr);
    const db = new Database(restored, { readonly: true });
    try {
      assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
      const nodes = (db.prepare('SELECT count(*) AS n FROM nodes WHERE cluster_id = ?').get(clusterId) as { n: number }).n;
      assert.equal(nodes, n, 'litestream restored every node');
    } finally {
      db.close();
    }
  });
});
