/**
 * `nebulagc-server restore` against backups the real `litestream replicate` made into a `file`
 * replica: the latest backup (integrity ok, the source's checksum, every row, its position), a
 * point in time between two batches, and the refusals: an existing output, an empty backup, no
 * URL, a bad or uncovered timestamp, an unreachable S3 endpoint, a backup that fails
 * integrity_check, and an aborted restore.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { litestreamBin, writeLitestreamConfig } from '../../server/src/backup/litestream-config.js';
import { restoreBackup } from '../../server/src/backup/restore.js';
import type { BackupConfig } from '../../server/src/config.js';
import { freePort, waitUntil } from '../helpers/cluster.js';

const MAIN = fileURLToPath(new URL('../../server/src/cli/main.js', import.meta.url));
const BATCH = 20;
const root = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-restore-test-'));
const running = new Set<ChildProcess>();
after(() => {
  for (const child of running) child.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

const backupConfig = (url: string, extra: Partial<BackupConfig> = {}): BackupConfig => ({
  url,
  endpoint: undefined,
  region: 'us-east-1',
  syncInterval: '100ms',
  bin: undefined,
  accessKeyId: undefined,
  secretAccessKey: undefined,
  restoreOnBoot: false,
  bootstrapFromBackup: false,
  ...extra,
});

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string>): Run {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_') && !k.startsWith('AWS_')));
  const r = spawnSync(process.execPath, [MAIN, ...args], { env: { ...inherited, ...env }, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A failed run ends with one error line of its own (Litestream's progress may come before it). */
function assertFails(r: Run, pattern: RegExp): string {
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stdout, '');
  const last = r.stderr.trimEnd().split('\n').at(-1)!;
  assert.match(last, /^nebulagc-server: error: /);
  assert.match(last, pattern);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
  return last;
}

const checksumOf = (file: string): string => {
  const r = cli(['db', 'checksum', '--db', file], {});
  assert.equal(r.status, 0, r.stderr);
  return (JSON.parse(r.stdout) as { checksum: string }).checksum;
};

const names = (file: string): string[] => {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare('SELECT name FROM tenants ORDER BY id').all() as { name: string }[]).map((r) => r.name);
  } finally {
    db.close();
  }
};

/** `litestream replicate` of `dbPath` into `url`, counting the WAL segments it uploads. */
function replicate(dbPath: string, url: string): { uploads(): number; stop(): Promise<void> } {
  const backup = backupConfig(url);
  const config = `${dbPath}.litestream.yml`;
  writeLitestreamConfig(config, dbPath, backup);
  const child = spawn(litestreamBin(backup), ['replicate', '-config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let uploads = 0;
  let log = '';
  for (const stream of [child.stdout!, child.stderr!]) {
    createInterface({ input: stream }).on('line', (line) => {
      log += `${line}\n`;
      if (line.includes('"msg":"wal segment written"')) uploads += 1;
    });
  }
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  return {
    uploads: () => uploads,
    async stop() {
      child.kill('SIGTERM');
      assert.equal(await exited, 0, log);
      running.delete(child);
    },
  };
}

async function uploadedSince(ls: { uploads(): number }, before: number): Promise<void> {
  assert.ok(await waitUntil(() => ls.uploads() > before, 15_000), 'litestream uploaded the batch');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('nebulagc-server restore', { timeout: 90_000 }, () => {
  const source = path.join(root, 'source', 'nebulagc.db');
  const backupDir = path.join(root, 'backup');
  const url = `file://${backupDir}`;
  const env = { NEBULAGC_DB_PATH: source, NEBULAGC_LITESTREAM_URL: url };
  const out = path.join(root, 'out');
  /** Between the batches: after batch 1 was uploaded, more than a second before batch 2. */
  let between = '';
  let batch2At = 0;
  let sourceChecksum = '';

  before(async () => {
    mkdirSync(path.dirname(source), { recursive: true });
    mkdirSync(out);
    const db = new Database(source);
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE tenants (id INTEGER PRIMARY KEY, name TEXT NOT NULL)');
    const insert = db.prepare('INSERT INTO tenants (name) VALUES (?)');
    const batch = (label: string): void => void db.transaction(() => Array.from({ length: BATCH }, (_, i) => insert.run(`${label}-${i}`)))();
    const ls = replicate(source, url);
    await uploadedSince(ls, 0);
    let uploads = ls.uploads();
    batch('b1');
    await uploadedSince(ls, uploads);
    await sleep(1200);
    between = new Date().toISOString();
    await sleep(1200);
    uploads = ls.uploads();
    batch2At = Date.now();
    batch('b2');
    await uploadedSince(ls, uploads);
    await ls.stop();
    db.close();
    sourceChecksum = checksumOf(source);
  });

  it('restores the latest backup: integrity ok, the source’s checksum, every row, and where it came from', () => {
    const output = path.join(out, 'latest.db');
    // Its own temp dir, to see that the Litestream config (which may hold the S3 key) is gone.
    const tmp = path.join(root, 'tmp');
    mkdirSync(tmp);
    const r = cli(['restore', '--output', output], { ...env, TMPDIR: tmp });
    assert.equal(r.status, 0, r.stderr);
    // Neither Litestream's temp files nor the read-only check's -wal and -shm are left.
    assert.deepEqual(readdirSync(out), ['latest.db']);
    assert.deepEqual(readdirSync(tmp), []);
    const result = JSON.parse(r.stdout);
    assert.equal(result.output, output);
    assert.equal(result.integrity, 'ok');
    assert.match(result.checksum, /^[0-9a-f]{16}$/);
    assert.equal(result.checksum, sourceChecksum);
    assert.equal(checksumOf(output), sourceChecksum);
    assert.ok(result.pages > 1 && result.bytes === result.pages * result.page_size, JSON.stringify(result));
    assert.match(result.generation, /^[0-9a-f]{16}$/);
    assert.equal(typeof result.wal_index, 'number');
    // Batch 2's segment was uploaded after batch 2 was written; the listing is to the second.
    const lastUpload = Date.parse(result.last_upload_at);
    assert.ok(lastUpload >= Math.floor(batch2At / 1000) * 1000 && lastUpload <= Date.now(), result.last_upload_at);
    assert.ok(Date.parse(result.restored_at) <= Date.now());
    assert.equal(typeof result.duration_ms, 'number');
    assert.equal(result.timestamp, undefined);
    assert.deepEqual(names(output), [...Array.from({ length: BATCH }, (_, i) => `b1-${i}`), ...Array.from({ length: BATCH }, (_, i) => `b2-${i}`)]);
    assert.match(r.stderr, new RegExp(`^restoring ${source} from ${url} into ${output}$`, 'm'));
    assert.match(r.stderr, new RegExp(`^litestream: restoring snapshot generation=${result.generation} index=\\d+$`, 'm'));
    assert.match(r.stderr, /^litestream: applied wal generation=[0-9a-f]{16} index=\d+ elapsed=/m);
  });

  it('--timestamp restores the backup as of that time: batch 1 only', () => {
    const output = path.join(out, 'between.db');
    const r = cli(['restore', '--output', output, '--timestamp', between], env);
    assert.equal(r.status, 0, r.stderr);
    const result = JSON.parse(r.stdout);
    assert.equal(result.integrity, 'ok');
    assert.equal(result.timestamp, between);
    assert.ok(Date.parse(result.last_upload_at) <= Date.parse(between), `${result.last_upload_at} is after ${between}`);
    assert.notEqual(result.checksum, sourceChecksum);
    assert.equal(result.checksum, checksumOf(output));
    assert.deepEqual(names(output), Array.from({ length: BATCH }, (_, i) => `b1-${i}`));
  });

  it('never writes over an existing file, nor next to a stray -wal', () => {
    const existing = path.join(out, 'existing.db');
    writeFileSync(existing, 'not a database');
    assertFails(cli(['restore', '--output', existing], env), new RegExp(`${existing} already exists: restore writes a new file and never replaces one`));
    assert.equal(readFileSync(existing, 'utf8'), 'not a database');
    const stray = path.join(out, 'stray.db');
    writeFileSync(`${stray}-wal`, '');
    assertFails(cli(['restore', '--output', stray], env), new RegExp(`${stray}-wal already exists`));
    assert.ok(!existsSync(stray));
  });

  it('fails clearly without a backup at the URL, or without a URL', () => {
    const output = path.join(out, 'none.db');
    const empty = `file://${path.join(root, 'empty')}`;
    assertFails(cli(['restore', '--output', output], { ...env, NEBULAGC_LITESTREAM_URL: empty }), new RegExp(`no backup found at ${empty}: it holds no generation`));
    assertFails(cli(['restore', '--output', output], { NEBULAGC_DB_PATH: source }), /NEBULAGC_LITESTREAM_URL is not set/);
    assert.ok(!existsSync(output));
  });

  it('rejects a timestamp that is not RFC 3339, and explains one that no generation covers', () => {
    const output = path.join(out, 'when.db');
    for (const bad of ['yesterday', '2026-13-01T00:00:00Z', '2026-02-30T00:00:00Z', '2026-01-01 00:00:00Z', '2026-01-01T00:00:00']) {
      assertFails(cli(['restore', '--output', output, '--timestamp', bad], env), /--timestamp must be RFC 3339/);
    }
    const later = new Date(Date.now() + 3600_000).toISOString();
    assertFails(cli(['restore', '--output', output, '--timestamp', later], env), /covers .*restore without --timestamp\) is the newest state at or before that time/);
    assertFails(cli(['restore', '--output', output, '--timestamp', '2001-01-01T00:00:00+02:00'], env), /covers 2001-01-01T00:00:00\+02:00: .*keeps no older generation/);
    assert.ok(!existsSync(output));
  });

  it('reports an unreachable S3 endpoint in one line, without the credentials', async () => {
    const port = await freePort();
    const r = cli(['restore', '--output', path.join(out, 's3.db')], {
      NEBULAGC_DB_PATH: source,
      NEBULAGC_LITESTREAM_URL: 's3://backups/nebulagc',
      NEBULAGC_LITESTREAM_ENDPOINT: `http://127.0.0.1:${port}`,
      AWS_ACCESS_KEY_ID: 'AKIARESTORETESTKEYID',
      AWS_SECRET_ACCESS_KEY: 'restore-test-secret-access-key',
    });
    assertFails(r, new RegExp(`litestream restore failed: cannot fetch generations: .*127\\.0\\.0\\.1:${port}.*connection refused`));
    assert.doesNotMatch(r.stderr, /AKIARESTORETESTKEYID|restore-test-secret-access-key/);
  });

  it('an aborted restore leaves no file', async () => {
    const output = path.join(out, 'aborted.db');
    const abort = new AbortController();
    await assert.rejects(
      restoreBackup({ backup: backupConfig(url), dbPath: source, output, onLine: () => abort.abort(new Error('stop')), signal: abort.signal }),
      /stop/,
    );
    assert.deepEqual(
      readdirSync(out).filter((f) => f.startsWith('aborted')),
      [],
    );
  });
});

describe('restore of a backup that fails integrity_check', { timeout: 60_000 }, () => {
  it('deletes the copy and says why', async () => {
    const dir = path.join(root, 'corrupt');
    mkdirSync(dir);
    const source = path.join(dir, 'nebulagc.db');
    const db = new Database(source);
    db.exec('CREATE TABLE tenants (id INTEGER PRIMARY KEY, name TEXT NOT NULL); CREATE INDEX tenants_name ON tenants (name)');
    for (let i = 0; i < 10; i++) db.prepare('INSERT INTO tenants (name) VALUES (?)').run(`t${i}`);
    const rootPage = (db.prepare("SELECT rootpage FROM sqlite_schema WHERE name = 'tenants_name'").get() as { rootpage: number }).rootpage;
    const pageSize = db.pragma('page_size', { simple: true }) as number;
    db.close();
    // Index entry ('t5', rowid 6) becomes ('t9', 6): a database SQLite still reads and Litestream
    // copies page by page, but whose index no longer matches its table.
    const bytes = readFileSync(source);
    const page = bytes.subarray((rootPage - 1) * pageSize, rootPage * pageSize);
    const at = page.indexOf(Buffer.from([3, 0x11, 1, 0x74, 0x35, 6]));
    assert.ok(at > 0, 'the index entry of t5');
    page[at + 4] = 0x39;
    writeFileSync(source, bytes);
    const wal = new Database(source);
    wal.pragma('journal_mode = WAL');
    wal.close();

    const backupUrl = `file://${path.join(dir, 'backup')}`;
    const ls = replicate(source, backupUrl);
    await uploadedSince(ls, 0);
    await ls.stop();
    const output = path.join(dir, 'restored.db');
    assertFails(
      cli(['restore', '--output', output], { NEBULAGC_DB_PATH: source, NEBULAGC_LITESTREAM_URL: backupUrl }),
      /the restored database failed verification, so it was deleted: integrity_check: .*missing from index tenants_name/,
    );
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.startsWith('restored')),
      [],
    );
  });
});
