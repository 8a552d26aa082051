import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { LATEST_SCHEMA_VERSION } from '../../server/src/db/migrations.js';
import { hashToken } from '../../server/src/domain/tokens.js';
import { makeTarGz, validBundle } from '../helpers/bundle.js';

/** The built CLI: dist/server/src/cli/main.js, next to this file's dist/test/cli/. */
const MAIN = fileURLToPath(new URL('../../server/src/cli/main.js', import.meta.url));
const SECRET = 'cli-test-hmac-secret-0123456789abcdef0123456789';
const ADMIN_TOKEN = 'cli-test-admin-token-0123456789abcdef0123456789';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The parent's environment without any NEBULAGC_* setting, plus `extra`. */
function cleanEnv(extra: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('NEBULAGC_')) env[k] = v;
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) env[k] = v;
  return env;
}

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

let dir: string;
let dbPath: string;

function run(args: string[], extraEnv: Record<string, string | undefined> = {}): Run {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    encoding: 'utf8',
    timeout: 60_000,
    env: cleanEnv({
      NEBULAGC_DB_PATH: dbPath,
      NEBULAGC_HMAC_SECRET: SECRET,
      NEBULAGC_DB_SYNCHRONOUS: 'NORMAL',
      ...extraEnv,
    }),
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a command that must succeed and print JSON. */
function runJson<T = any>(args: string[], extraEnv: Record<string, string | undefined> = {}): T {
  const r = run(args, extraEnv);
  assert.equal(r.status, 0, `${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** A failure is one line on stderr, `nebulagc-server: error: ...`, and no stack trace. */
function assertOneLineError(r: Run, pattern?: RegExp): void {
  assert.notEqual(r.status, 0, 'expected a non-zero exit');
  const text = r.stderr.trimEnd();
  assert.ok(text.startsWith('nebulagc-server: error: '), `stderr: ${JSON.stringify(r.stderr)}`);
  assert.equal(text.split('\n').length, 1, `expected one line, got: ${JSON.stringify(r.stderr)}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'stack trace on stderr');
  assert.doesNotMatch(r.stderr, /\.js:\d+/, 'source location on stderr');
  if (pattern) assert.match(text, pattern);
}

function readDb<T>(file: string, fn: (db: Database.Database) => T): T {
  const db = new Database(file, { readonly: true });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-cli-'));
  dbPath = path.join(dir, 'data', 'nebulagc.db');
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('nebulagc-server CLI', () => {
  let tenantId: string;
  let clusterId: string;
  let clusterToken: string;
  let nodeId: string;
  let nodeToken: string;

  it('--help lists the commands', () => {
    const r = run(['--help']);
    assert.equal(r.status, 0, r.stderr);
    for (const cmd of ['serve', 'tenant', 'cluster', 'node', 'operator', 'migrate', 'db', 'backup', 'bundle']) {
      assert.match(r.stdout, new RegExp(`^\\s+${cmd}\\b`, 'm'), `--help does not list ${cmd}`);
    }
  });

  it('a subcommand has its own --help', () => {
    const r = run(['node', 'create', '--help']);
    assert.equal(r.status, 0, r.stderr);
    for (const flag of ['--cluster-id', '--name', '--mtu', '--routes']) assert.ok(r.stdout.includes(flag), flag);
  });

  it('an unknown command exits non-zero', () => {
    const r = run(['frobnicate']);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /unknown command/);
  });

  it('migrate creates the schema, and a second run applies nothing', () => {
    assert.equal(existsSync(dbPath), false);
    const latest = LATEST_SCHEMA_VERSION;
    assert.deepEqual(runJson(['migrate']), { from: 0, to: latest, applied: Array.from({ length: latest }, (_, i) => i + 1) });
    assert.ok(existsSync(dbPath));
    assert.deepEqual(runJson(['migrate']), { from: latest, to: latest, applied: [] });
  });

  it('tenant create prints the tenant as JSON with an id', () => {
    const t = runJson(['tenant', 'create', '--name', 'acme']);
    assert.match(t.id, UUID);
    assert.equal(t.name, 'acme');
    tenantId = t.id;
  });

  it('tenant create with a taken name fails with one line', () => {
    assertOneLineError(run(['tenant', 'create', '--name', 'acme']), /already exists/);
  });

  it('tenant create with an invalid name names the field', () => {
    assertOneLineError(run(['tenant', 'create', '--name', 'bad name']), /name: /);
  });

  it('tenant list', () => {
    const list = runJson<{ id: string; name: string }[]>(['tenant', 'list']);
    assert.deepEqual(
      list.map((t) => [t.id, t.name]),
      [[tenantId, 'acme']],
    );
  });

  it('--db overrides NEBULAGC_DB_PATH', () => {
    const other = path.join(dir, 'other', 'x.db');
    assert.deepEqual(runJson(['tenant', 'list', '--db', other]), []);
    assert.ok(existsSync(other));
  });

  it('cluster create prints the cluster and a token', () => {
    const r = runJson(['cluster', 'create', '--tenant-id', tenantId, '--name', 'c1']);
    assert.match(r.cluster.id, UUID);
    assert.equal(r.cluster.tenant_id, tenantId);
    assert.equal(r.cluster.name, 'c1');
    assert.equal(r.cluster.lighthouse_port, 4242);
    assert.equal(r.cluster.overlay_cidr, '10.42.0.0/16');
    // Its CA comes from nebula-cert, like the API's.
    assert.match(r.cluster.ca_cert, /^-----BEGIN NEBULA CERTIFICATE-----/);
    assert.equal(r.cluster.has_ca_key, true);
    assert.match(r.token, /^ngc_cluster_[A-Za-z0-9_-]{43}$/);
    clusterId = r.cluster.id;
    clusterToken = r.token;
    // Stored only as its HMAC.
    const stored = readDb(dbPath, (db) => db.prepare('SELECT token_hash FROM clusters WHERE id = ?').pluck().get(clusterId));
    assert.equal(stored, hashToken(SECRET, clusterToken));
  });

  it('cluster create for a missing tenant fails with one line', () => {
    assertOneLineError(run(['cluster', 'create', '--tenant-id', '00000000-0000-4000-8000-000000000000', '--name', 'c2']), /tenant not found/);
  });

  it('cluster list', () => {
    const all = runJson<{ id: string; name: string }[]>(['cluster', 'list']);
    assert.deepEqual(all.map((c) => c.id), [clusterId]);
    assert.deepEqual(runJson<unknown[]>(['cluster', 'list', '--tenant-id', tenantId]).length, 1);
    assert.deepEqual(runJson(['cluster', 'list', '--tenant-id', '00000000-0000-4000-8000-000000000000']), []);
  });

  it('cluster rotate-token gives a different token, and only the new one is stored', () => {
    const r = runJson<{ token: string }>(['cluster', 'rotate-token', clusterId]);
    assert.match(r.token, /^ngc_cluster_[A-Za-z0-9_-]{43}$/);
    assert.notEqual(r.token, clusterToken);
    const stored = readDb(dbPath, (db) => db.prepare('SELECT token_hash FROM clusters WHERE id = ?').pluck().get(clusterId));
    assert.equal(stored, hashToken(SECRET, r.token));
    clusterToken = r.token;
  });

  it('cluster rotate-ca replaces the CA; a bad --overlay-cidr or a missing nebula-cert fails with one line', () => {
    const before = runJson<{ ca_cert: string }[]>(['cluster', 'list'])[0]!.ca_cert;
    const r = runJson(['cluster', 'rotate-ca', clusterId]);
    assert.match(r.ca_cert, /^-----BEGIN NEBULA CERTIFICATE-----/);
    assert.notEqual(r.ca_cert, before);
    assertOneLineError(run(['cluster', 'create', '--tenant-id', tenantId, '--name', 'c3', '--overlay-cidr', '10.0.0.1/8']), /overlay_cidr: /);
    const missing = run(['cluster', 'create', '--tenant-id', tenantId, '--name', 'c3'], { NEBULAGC_NEBULA_CERT_BIN: '/nonexistent/nebula-cert' });
    assertOneLineError(missing, /NEBULAGC_NEBULA_CERT_BIN/);
  });

  it('cluster rotate-token of an unknown cluster fails with one line', () => {
    assertOneLineError(run(['cluster', 'rotate-token', '00000000-0000-4000-8000-000000000000']), /cluster not found/);
  });

  it('node create with --mtu and --routes', () => {
    const r = runJson(['node', 'create', '--cluster-id', clusterId, '--name', 'n1', '--mtu', '1400', '--routes', '10.1.0.0/16']);
    assert.match(r.node.id, UUID);
    assert.equal(r.node.cluster_id, clusterId);
    assert.equal(r.node.name, 'n1');
    assert.equal(r.node.mtu, 1400);
    assert.deepEqual(r.node.routes, ['10.1.0.0/16']);
    assert.equal(r.node.is_admin, false);
    assert.match(r.token, /^ngc_node_[A-Za-z0-9_-]{43}$/);
    nodeId = r.node.id;
    nodeToken = r.token;
  });

  it('node create with several routes, --groups and --admin', () => {
    const r = runJson(['node', 'create', '--cluster-id', clusterId, '--name', 'n2', '--admin', '--routes', '10.2.0.0/16, 10.3.0.0/24', '--groups', 'web,ops']);
    assert.deepEqual(r.node.groups, ['web', 'ops']);
    assert.deepEqual(r.node.routes, ['10.2.0.0/16', '10.3.0.0/24']);
    assert.equal(r.node.is_admin, true);
    assert.equal(r.node.mtu, 1300);
  });

  it('node create with a bad --mtu exits non-zero with one clear line', () => {
    const r = run(['node', 'create', '--cluster-id', clusterId, '--name', 'n3', '--mtu', '99']);
    assertOneLineError(r, /mtu/);
    assert.equal(r.stdout, '');
    const r2 = run(['node', 'create', '--cluster-id', clusterId, '--name', 'n3', '--mtu', 'big']);
    assertOneLineError(r2, /--mtu/);
    // Neither created a node.
    assert.equal(runJson<unknown[]>(['node', 'list', '--cluster-id', clusterId]).length, 2);
  });

  it('node create with a bad route names the field', () => {
    assertOneLineError(run(['node', 'create', '--cluster-id', clusterId, '--name', 'n3', '--routes', '10.0.0.0/99']), /routes/);
  });

  it('node list', () => {
    const list = runJson<{ id: string; name: string }[]>(['node', 'list', '--cluster-id', clusterId]);
    assert.deepEqual(list.map((n) => n.name), ['n1', 'n2']);
    assert.equal(list[0]!.id, nodeId);
  });

  it('node rotate-token gives a different token, and only the new one is stored', () => {
    const r = runJson<{ token: string }>(['node', 'rotate-token', nodeId]);
    assert.match(r.token, /^ngc_node_[A-Za-z0-9_-]{43}$/);
    assert.notEqual(r.token, nodeToken);
    const stored = readDb(dbPath, (db) => db.prepare('SELECT token_hash FROM nodes WHERE id = ?').pluck().get(nodeId));
    assert.equal(stored, hashToken(SECRET, r.token));
  });

  it('node rotate-token of an unknown node fails with one line', () => {
    assertOneLineError(run(['node', 'rotate-token', '00000000-0000-4000-8000-000000000000']), /node not found/);
  });

  it('operator rotate-token prints a token and leaves exactly its hash stored', () => {
    const a = runJson<{ token: string }>(['operator', 'rotate-token']);
    const b = runJson<{ token: string }>(['operator', 'rotate-token']);
    assert.match(a.token, /^ngc_op_[A-Za-z0-9_-]{43}$/);
    assert.notEqual(a.token, b.token);
    const hashes = readDb(dbPath, (db) => db.prepare('SELECT token_hash FROM operator_tokens').pluck().all());
    assert.deepEqual(hashes, [hashToken(SECRET, b.token)]);
  });

  it('db check prints ok true', () => {
    assert.deepEqual(runJson(['db', 'check']), { ok: true, messages: ['ok'] });
  });

  it('db compact', () => {
    const r = runJson<{ before_bytes: number; after_bytes: number }>(['db', 'compact']);
    assert.ok(Number.isInteger(r.before_bytes) && r.before_bytes > 0);
    assert.ok(Number.isInteger(r.after_bytes) && r.after_bytes > 0);
    // Still intact and complete afterwards.
    assert.deepEqual(runJson(['db', 'check']), { ok: true, messages: ['ok'] });
    assert.equal(runJson<unknown[]>(['tenant', 'list']).length, 1);
  });

  it('backup --out writes a database that opens and has the tenant', () => {
    const out = path.join(dir, 'backup.db');
    const r = runJson<{ out: string; bytes: number }>(['backup', '--out', out]);
    assert.equal(r.out, out);
    assert.equal(r.bytes, statSync(out).size);
    readDb(out, (db) => {
      assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
      assert.deepEqual(db.prepare('SELECT id, name FROM tenants').all(), [{ id: tenantId, name: 'acme' }]);
      assert.equal(db.prepare('SELECT count(*) FROM nodes').pluck().get(), 2);
    });
  });

  it('backup without --out fails', () => {
    const r = run(['backup']);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /--out/);
  });

  it('bundle verify accepts a valid bundle', async () => {
    const file = path.join(dir, 'good.tar.gz');
    writeFileSync(file, await validBundle());
    const r = run(['bundle', 'verify', file]);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.ok, true);
    assert.match(out.sha256, /^[0-9a-f]{64}$/);
    assert.deepEqual(out.files, ['ca.crt', 'config.yml']);
  });

  it('bundle verify refuses a traversal bundle with one error line and no stack', async () => {
    const file = path.join(dir, 'evil.tar.gz');
    writeFileSync(file, await validBundle([{ name: '../escape', content: 'x' }]));
    const r = run(['bundle', 'verify', file]);
    assertOneLineError(r, /\.\./);
    assert.equal(r.stdout, '');
  });

  it('bundle verify refuses a symlink bundle', async () => {
    const file = path.join(dir, 'link.tar.gz');
    writeFileSync(file, await makeTarGz([{ name: 'config.yml', type: 'symlink', linkname: '/etc/passwd' }]));
    assertOneLineError(run(['bundle', 'verify', file]), /symlink/);
  });

  it('bundle verify honours --max-bytes', async () => {
    const file = path.join(dir, 'good2.tar.gz');
    writeFileSync(file, await validBundle());
    assertOneLineError(run(['bundle', 'verify', file, '--max-bytes', '10']), /exceeds 10 bytes/);
  });

  it('bundle verify of a missing file fails with one line', () => {
    assertOneLineError(run(['bundle', 'verify', path.join(dir, 'nope.tar.gz')]), /ENOENT|no such file/);
  });

  it('refuses to run without NEBULAGC_HMAC_SECRET, naming it', () => {
    const r = run(['tenant', 'list'], { NEBULAGC_HMAC_SECRET: undefined });
    assertOneLineError(r, /NEBULAGC_HMAC_SECRET/);
  });

  it('refuses a short NEBULAGC_HMAC_SECRET, naming it', () => {
    assertOneLineError(run(['tenant', 'list'], { NEBULAGC_HMAC_SECRET: 'short' }), /NEBULAGC_HMAC_SECRET/);
  });

  it('refuses a bad env value, naming the variable', () => {
    assertOneLineError(run(['serve'], { NEBULAGC_LISTEN: 'nonsense' }), /NEBULAGC_LISTEN/);
  });
});

// ---------------------------------------------------------------------------------------------
// serve

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

interface Served {
  child: ChildProcess;
  url: string;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function startServe(args: string[], env: Record<string, string | undefined>): Promise<Served> {
  const port = await freePort();
  const child = spawn(process.execPath, [MAIN, 'serve', ...args], {
    env: cleanEnv({ NEBULAGC_LISTEN: `127.0.0.1:${port}`, NEBULAGC_DB_SYNCHRONOUS: 'NORMAL', ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const url = `http://127.0.0.1:${port}`;
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (gone) throw new Error(`serve exited before it came up.\nstdout: ${out}\nstderr: ${err}`);
    try {
      const res = await fetch(`${url}/health/live`);
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`serve did not come up.\nstdout: ${out}\nstderr: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, url, stdout: () => out, stderr: () => err, exited };
}

/** SIGTERM, then the exit status; SIGKILL as a last resort so no process outlives the test. */
async function stop(s: Served): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
  const timer = setTimeout(() => s.child.kill('SIGKILL'), 20_000);
  try {
    return await s.exited;
  } finally {
    clearTimeout(timer);
  }
}

function jsonLines(text: string): Record<string, unknown>[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        assert.fail(`stdout line is not JSON: ${l}`);
      }
    });
}

describe('nebulagc-server serve', () => {
  let serveDir: string;
  before(() => {
    serveDir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-serve-'));
  });
  after(() => {
    rmSync(serveDir, { recursive: true, force: true });
  });

  it('comes up, logs JSON without the NEBULAGC_ADMIN_TOKEN, and exits 0 on SIGTERM', { timeout: 90_000 }, async () => {
    const db = path.join(serveDir, 'env-token', 'nebulagc.db');
    const s = await startServe([], { NEBULAGC_DB_PATH: db, NEBULAGC_HMAC_SECRET: SECRET, NEBULAGC_ADMIN_TOKEN: ADMIN_TOKEN });
    try {
      const ok = await fetch(`${s.url}/api/v1/tenants`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.equal(ok.status, 200);
      assert.deepEqual(await ok.json(), { tenants: [] });
      const created = await fetch(`${s.url}/api/v1/tenants`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'served' }),
      });
      assert.equal(created.status, 201);
      const denied = await fetch(`${s.url}/api/v1/tenants`, { headers: { authorization: 'Bearer wrong-token-wrong-token-wrong-token' } });
      assert.equal(denied.status, 401);
      await denied.arrayBuffer();
    } finally {
      const exit = await stop(s);
      assert.deepEqual(exit, { code: 0, signal: null }, `stderr: ${s.stderr()}`);
    }
    const lines = jsonLines(s.stdout());
    assert.ok(lines.some((l) => l.msg === 'listening'), 'no "listening" log line');
    assert.ok(lines.some((l) => l.msg === 'shutting down' && l.signal === 'SIGTERM'), 'no shutdown log line');
    assert.ok(!s.stdout().includes(ADMIN_TOKEN), 'the admin token appears in the JSON log');
    assert.ok(!s.stdout().includes(SECRET), 'the HMAC secret appears in the JSON log');
    assert.ok(!s.stderr().includes(ADMIN_TOKEN), 'a token from the environment should not be echoed');
    // The tenant created over HTTP is in the database afterwards.
    readDb(db, (d) => assert.equal(d.prepare('SELECT name FROM tenants').pluck().get(), 'served'));
  });

  it('--dev with no secret and no admin token prints a working operator token on stderr only', { timeout: 90_000 }, async () => {
    const db = path.join(serveDir, 'dev', 'nebulagc.db');
    const s = await startServe(['--dev', '--db', db], {});
    let token: string | undefined;
    try {
      const deadline = Date.now() + 10_000;
      while (!(token = /ngc_op_[A-Za-z0-9_-]{43}/.exec(s.stderr())?.[0]) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(token, `no operator token on stderr: ${s.stderr()}`);
      const res = await fetch(`${s.url}/api/v1/tenants`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { tenants: [] });
      const bad = await fetch(`${s.url}/api/v1/tenants`, { headers: { authorization: `Bearer ${token.slice(0, -1)}x` } });
      assert.equal(bad.status, 401);
      await bad.arrayBuffer();
    } finally {
      const exit = await stop(s);
      assert.deepEqual(exit, { code: 0, signal: null }, `stderr: ${s.stderr()}`);
    }
    assert.ok(!s.stdout().includes(token), 'the generated token appears in stdout (the JSON log)');
    assert.ok(!s.stdout().includes('ngc_op_'), 'something token-like appears in stdout');
    jsonLines(s.stdout());
    // Dev mode kept its generated secret next to the database, private to the owner.
    const secretFile = path.join(path.dirname(db), 'hmac-secret');
    assert.equal(statSync(secretFile).mode & 0o777, 0o600);
    assert.ok(!s.stdout().includes(readFileSync(secretFile, 'utf8').trim()), 'the dev secret appears in the log');
  });

  it('--dev on a restart keeps the token working and prints no new one', { timeout: 90_000 }, async () => {
    const db = path.join(serveDir, 'dev', 'nebulagc.db');
    const s = await startServe(['--dev', '--db', db], {});
    const exit = await stop(s);
    assert.deepEqual(exit, { code: 0, signal: null });
    // Everything it wrote has arrived once it exited: the token from the first run is not shown again.
    assert.match(s.stderr(), /listening on/);
    assert.doesNotMatch(s.stderr(), /ngc_op_/);
  });

  it('serve without a secret and without --dev exits non-zero naming NEBULAGC_HMAC_SECRET', () => {
    const r = spawnSync(process.execPath, [MAIN, 'serve'], {
      encoding: 'utf8',
      timeout: 60_000,
      env: cleanEnv({ NEBULAGC_LISTEN: '127.0.0.1:0', NEBULAGC_DB_PATH: path.join(serveDir, 'nosecret', 'x.db') }),
    });
    assertOneLineError({ status: r.status, stdout: r.stdout, stderr: r.stderr }, /NEBULAGC_HMAC_SECRET/);
  });

  it('survives a truncated bundle upload and answers 400', { timeout: 90_000 }, async () => {
    const db = path.join(serveDir, 'upload', 'nebulagc.db');
    const env = { NEBULAGC_DB_PATH: db, NEBULAGC_HMAC_SECRET: SECRET, NEBULAGC_DB_SYNCHRONOUS: 'NORMAL' };
    const tenant = JSON.parse(
      spawnSync(process.execPath, [MAIN, 'tenant', 'create', '--name', 'up'], { encoding: 'utf8', env: cleanEnv(env) }).stdout,
    ) as { id: string };
    const cluster = JSON.parse(
      spawnSync(process.execPath, [MAIN, 'cluster', 'create', '--tenant-id', tenant.id, '--name', 'c'], { encoding: 'utf8', env: cleanEnv(env) })
        .stdout,
    ) as { cluster: { id: string } };

    const s = await startServe([], { ...env, NEBULAGC_ADMIN_TOKEN: ADMIN_TOKEN });
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    try {
      const good = await validBundle();
      const truncated = good.subarray(0, good.length - 20);
      const res = await fetch(`${s.url}/api/v1/config/bundle?cluster_id=${cluster.cluster.id}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/gzip' },
        body: new Uint8Array(truncated),
      }).catch((e: unknown) => e as Error);
      if (res instanceof Error) {
        const died = await Promise.race([s.exited, new Promise((r) => setTimeout(() => r(undefined), 5000))]);
        assert.fail(`upload failed (${res.message}); server exit: ${JSON.stringify(died)}; stderr: ${s.stderr().split('\n').slice(0, 4).join(' | ')}`);
      }
      assert.equal(res.status, 400);
      assert.equal(((await res.json()) as { code: string }).code, 'INVALID_BUNDLE');
      const live = await fetch(`${s.url}/health/live`);
      assert.equal(live.status, 200);
    } finally {
      exit = await stop(s);
    }
    assert.deepEqual(exit, { code: 0, signal: null });
  });
});
