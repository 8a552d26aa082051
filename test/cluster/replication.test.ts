/**
 * WAL-frame replication between real server processes on 127.0.0.1 (issue 9's required tests):
 * a master and replicas, each its own `nebulagc-server serve` from dist/, with their own SQLite
 * files. Every test bounds its time and kills its processes and removes its temp dir, even when
 * it fails.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { validBundle } from '../helpers/bundle.js';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { call, TEST_ADMIN_TOKEN, TEST_SECRET, type Reply } from '../helpers/server.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../server/src/cli/main.js');
const MiB = 1024 * 1024;
const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const MASTER_ENV = {
  NEBULAGC_HA_MODE: 'master',
  NEBULAGC_DB_SYNCHRONOUS: 'NORMAL',
  NEBULAGC_MAX_BUNDLE_BYTES: String(12 * MiB),
};
const replicaEnv = (master: ServerProcess, extra: Record<string, string> = {}): Record<string, string> => ({
  NEBULAGC_HA_MODE: 'replica',
  NEBULAGC_MASTER_URL: master.url,
  NEBULAGC_MAX_BUNDLE_BYTES: String(12 * MiB),
  ...extra,
});

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: every node a test starts is killed and its directory removed at the end.

class Fixture {
  private readonly dir: { root: string; remove(): void };
  private readonly nodes = new Map<string, ServerProcess>();

  constructor(label: string) {
    this.dir = clusterDir(label);
    fixtures.add(this);
  }

  get root(): string {
    return this.dir.root;
  }

  async start(name: string, env: Record<string, string>): Promise<ServerProcess> {
    const n = await startNode(name, this.dir.root, env);
    this.nodes.set(name, n);
    return n;
  }

  master(env: Record<string, string> = {}): Promise<ServerProcess> {
    return this.start('master', { ...MASTER_ENV, ...env });
  }

  replica(name: string, master: ServerProcess, env: Record<string, string> = {}): Promise<ServerProcess> {
    return this.start(name, replicaEnv(master, env));
  }

  async restart(n: ServerProcess): Promise<ServerProcess> {
    const again = await n.restart();
    this.nodes.set(n.name, again);
    return again;
  }

  /** The last lines each process wrote, for failure messages. */
  logs(lines = 15): string {
    return [...this.nodes.values()].map((n) => `--- ${n.name}:\n${n.output().split('\n').slice(-lines).join('\n')}`).join('\n');
  }

  async cleanup(): Promise<void> {
    fixtures.delete(this);
    await Promise.all([...this.nodes.values()].map((n) => n.kill9()));
    this.dir.remove();
  }
}

const fixtures = new Set<Fixture>();
// A test that timed out may not reach its finally before the file ends.
after(async () => {
  for (const f of [...fixtures]) await f.cleanup();
});

// ---------------------------------------------------------------------------------------------
// API helpers.

async function expectStatus<T = any>(p: Promise<Reply<T>>, status: number, what: string): Promise<Reply<T>> {
  const r = await p;
  if (r.status !== status) {
    const body = Buffer.isBuffer(r.body) ? r.body.subarray(0, 200).toString() : JSON.stringify(r.body);
    assert.fail(`${what}: expected ${status}, got ${r.status} ${body}`);
  }
  return r;
}

interface ClusterRef {
  tenantId: string;
  clusterId: string;
  admin: Record<string, string>;
}

async function makeCluster(base: string, label: string): Promise<ClusterRef> {
  const t = await expectStatus(call(base, 'POST', '/api/v1/tenants', { headers: op, json: { name: `tenant-${label}` } }), 201, 'tenant');
  const c = await expectStatus(
    call(base, 'POST', '/api/v1/clusters', { headers: op, json: { tenant_id: t.body.id, name: `cluster-${label}` } }),
    201,
    'cluster',
  );
  const clusterId = c.body.cluster.id as string;
  const a = await expectStatus(
    call(base, 'POST', '/api/v1/nodes', { headers: op, json: { cluster_id: clusterId, name: 'admin', is_admin: true, overlay_ip: '10.200.0.1' } }),
    201,
    'admin node',
  );
  return { tenantId: t.body.id, clusterId, admin: { 'x-nebulagc-node-token': a.body.token } };
}

interface MadeNode {
  id: string;
  token: string;
}

async function makeNode(base: string, k: ClusterRef, json: Record<string, unknown>): Promise<MadeNode> {
  const r = await expectStatus(call(base, 'POST', '/api/v1/nodes', { headers: k.admin, json }), 201, `node ${JSON.stringify(json)}`);
  return { id: r.body.node.id, token: r.body.token };
}

/** Runs `fn` over `items` with at most `width` in flight. */
async function inParallel<T, R>(items: T[], width: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}

/** A bundle whose tar.gz is about `bytes` long: random data does not compress. */
const bigBundle = (bytes: number): Promise<Buffer> => validBundle([{ name: 'blobs/random.bin', content: randomBytes(bytes) }]);

async function uploadBundle(base: string, k: ClusterRef, data: Buffer): Promise<number> {
  const r = await expectStatus(
    call(base, 'POST', '/api/v1/config/bundle', { headers: k.admin, raw: data }),
    201,
    `bundle upload of ${data.length} bytes`,
  );
  return r.body.version as number;
}

interface Position {
  epoch: number;
  txid: number;
  checksum: string;
}

async function health(n: ServerProcess): Promise<any> {
  return (await call(n.url, 'GET', '/health')).body;
}

async function positionOf(n: ServerProcess): Promise<Position | null> {
  return (await health(n)).position as Position | null;
}

/**
 * Waits until every replica reports the master's txid and checksum (and the master did not
 * move meanwhile). Returns the master's position.
 */
async function waitCaughtUp(fx: Fixture, master: ServerProcess, replicas: ServerProcess[], timeoutMs = 30_000): Promise<Position> {
  let last = '';
  let at: Position | undefined;
  const ok = await waitUntil(
    async () => {
      const m = await positionOf(master);
      const rs = await Promise.all(replicas.map(positionOf));
      last = JSON.stringify({ master: m, replicas: rs });
      if (!m || !rs.every((r) => r !== null && r.txid === m.txid && r.checksum === m.checksum)) return false;
      const again = await positionOf(master);
      at = m;
      return again !== null && again.txid === m.txid;
    },
    timeoutMs,
    100,
  );
  assert.ok(ok, `replicas did not catch up within ${timeoutMs} ms: ${last}\n${fx.logs()}`);
  return at!;
}

/** Every page of the database, through a fresh read-only connection (one read transaction). */
function readPages(dbPath: string): Buffer[] {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    const rows = db.prepare('SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno').all() as { pgno: number; data: Buffer }[];
    rows.forEach((r, i) => assert.equal(r.pgno, i + 1));
    return rows.map((r) => r.data);
  } finally {
    db.close();
  }
}

function pagesDiffer(a: Buffer[], b: Buffer[]): string | undefined {
  if (a.length !== b.length) return `page counts differ: ${a.length} vs ${b.length}`;
  const differing: number[] = [];
  for (let i = 0; i < a.length; i++) if (!a[i]!.equals(b[i]!)) differing.push(i + 1);
  return differing.length ? `${differing.length} pages differ, first ${differing.slice(0, 10).join(', ')}` : undefined;
}

function integrity(dbPath: string, readonly = true): string {
  const db = new Database(dbPath, { readonly, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    return (db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check).join('; ');
  } finally {
    db.close();
  }
}

/**
 * While everything runs: once caught up, each replica's pages (read through sqlite_dbpage on a
 * fresh connection) equal the master's, and integrity_check is ok on each. A commit landing
 * between the reads (another process's write not yet captured) makes it wait and try again.
 */
async function assertIdenticalLive(fx: Fixture, master: ServerProcess, replicas: ServerProcess[]): Promise<Position> {
  let problem = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const pos = await waitCaughtUp(fx, master, replicas);
    const m = readPages(master.dbPath);
    const diffs = replicas.map((r) => pagesDiffer(m, readPages(r.dbPath)));
    const after = await positionOf(master);
    problem = replicas.map((r, i) => (diffs[i] ? `${r.name}: ${diffs[i]}` : '')).filter(Boolean).join('; ');
    if (!problem) {
      for (const n of [master, ...replicas]) assert.equal(integrity(n.dbPath), 'ok', `integrity_check on ${n.name}`);
      return pos;
    }
    if (after?.txid === pos.txid) {
      // Nothing moved on the master and still different: give a capture timer one more chance.
      await sleep(300);
      const moved = await positionOf(master);
      if (moved?.txid === pos.txid) break;
    }
  }
  assert.fail(`replica pages differ from the master's at the same position: ${problem}\n${fx.logs()}`);
}

/**
 * After every process has stopped: checkpoint each file (a read-write connection), then the
 * files must be byte-identical, and integrity_check ok.
 */
function assertIdenticalFiles(master: ServerProcess, replicas: ServerProcess[]): void {
  for (const n of [master, ...replicas]) {
    const db = new Database(n.dbPath, { fileMustExist: true });
    const [r] = db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
    db.close();
    assert.equal(r!.busy, 0, `checkpoint of ${n.name} was busy`);
    assert.equal(integrity(n.dbPath, false), 'ok', `integrity_check on ${n.name} after stopping`);
  }
  const m = readFileSync(master.dbPath);
  for (const r of replicas) {
    const f = readFileSync(r.dbPath);
    assert.ok(f.equals(m), `${r.name}'s database file (${f.length} bytes) differs from the master's (${m.length} bytes)`);
  }
}

async function metricsText(n: ServerProcess): Promise<string> {
  const r = await fetch(`${n.url}/metrics`);
  assert.equal(r.status, 200);
  return r.text();
}

/** A sample's value from Prometheus text; `labels` like `replica="r1"`. */
function metric(text: string, name: string, labels?: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    if (labels !== undefined && !(m[2] ?? '').includes(labels)) continue;
    if (labels === undefined && m[2] !== undefined && m[2] !== '{}') continue;
    return Number(m[3]);
  }
  return undefined;
}

/** Runs the built CLI; resolves with its exit code and output, killed after `timeoutMs`. */
function runCli(args: string[], env: Record<string, string>, timeoutMs = 30_000): Promise<{ code: number | null; out: string }> {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code, out });
    });
  });
}

/** What a client can read: the same JSON (and bundle bytes) on every node. */
async function apiView(base: string, k: ClusterRef): Promise<unknown> {
  const get = async (url: string, headers: Record<string, string> = op): Promise<unknown> => {
    const r = await call(base, 'GET', url, { headers });
    return { status: r.status, body: Buffer.isBuffer(r.body) ? r.body.toString('base64') : r.body };
  };
  const q = `cluster_id=${k.clusterId}`;
  return {
    tenants: await get('/api/v1/tenants?limit=1000'),
    clusters: await get('/api/v1/clusters?limit=1000'),
    cluster: await get(`/api/v1/clusters/${k.clusterId}`),
    nodes: await get(`/api/v1/nodes?${q}&limit=1000`),
    topology: await get(`/api/v1/topology?${q}`),
    routes: await get(`/api/v1/routes/cluster?${q}`),
    version: await get(`/api/v1/config/version?${q}`),
    bundles: await get(`/api/v1/config/bundles?${q}`),
    bundle: await get(`/api/v1/config/bundle?${q}`),
  };
}

/**
 * Keeps writing through the API (node creates, updates, now and then a bundle) until stopped;
 * tolerates a master that is down. `acked` holds the ids whose create answered 201.
 */
function writeStream(getBase: () => string, k: ClusterRef, label: string, opts: { bundleEvery?: number; width?: number } = {}) {
  let stopped = false;
  const acked: string[] = [];
  let failures = 0;
  let n = 0;
  const loop = async (): Promise<void> => {
    while (!stopped) {
      const i = n++;
      try {
        const r = await call(getBase(), 'POST', '/api/v1/nodes', { headers: k.admin, json: { name: `${label}-${i}`, mtu: 1300 + (i % 50) } });
        if (r.status === 201) acked.push(r.body.node.id);
        else failures++;
        if (i % 7 === 3 && acked.length > 0) {
          await call(getBase(), 'PATCH', `/api/v1/nodes/${acked[acked.length - 1]}`, { headers: k.admin, json: { mtu: 1400 } });
        }
        if (opts.bundleEvery && i % opts.bundleEvery === 0) {
          await call(getBase(), 'POST', '/api/v1/config/bundle', { headers: k.admin, raw: await bigBundle(200 * 1024) });
        }
      } catch {
        failures++;
        await sleep(20);
      }
    }
  };
  const done = Promise.all(Array.from({ length: opts.width ?? 1 }, loop));
  return {
    acked,
    get failures() {
      return failures;
    },
    get count() {
      return acked.length;
    },
    async stop(): Promise<void> {
      stopped = true;
      await done;
    },
  };
}

async function nodeIds(base: string, k: ClusterRef): Promise<Set<string>> {
  const r = await expectStatus(call(base, 'GET', `/api/v1/nodes?cluster_id=${k.clusterId}&limit=1000`, { headers: op }), 200, 'node list');
  return new Set((r.body.nodes as { id: string }[]).map((n) => n.id));
}

function segmentsOf(master: ServerProcess): { file: string; firstTxid: number }[] {
  const dir = `${path.resolve(master.dbPath)}-replication/log`;
  return readdirSync(dir)
    .filter((f) => /^seg-\d{16}\.log$/.test(f))
    .sort()
    .map((file) => ({ file, firstTxid: Number(file.slice(4, 20)) }));
}

// ---------------------------------------------------------------------------------------------

describe('replication between real processes', () => {
  it('1. a mixed workload (bulk nodes, multi-MiB bundles, shrinking deletes, foreign schema changes, VACUUM) leaves two replicas byte-identical', { timeout: 120_000 }, async (t) => {
    const fx = new Fixture('repl-mixed');
    try {
      const master = await fx.master();
      const r1 = await fx.replica('r1', master);
      const r2 = await fx.replica('r2', master);
      const base = master.url;

      // Tenants and clusters; a tenant with nothing in it, deleted again.
      const big = await makeCluster(base, 'big');
      const other = await makeCluster(base, 'other');
      const empty = await expectStatus(call(base, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'tenant-empty' } }), 201, 'tenant');
      await expectStatus(call(base, 'DELETE', `/api/v1/tenants/${empty.body.id}`, { headers: op }), 204, 'tenant delete');

      // Many nodes in the big cluster, with routes on some.
      const bigNodes = await inParallel(Array.from({ length: 160 }, (_, i) => i), 6, (i) =>
        makeNode(base, big, {
          name: `n${i}`,
          overlay_ip: `10.1.${Math.floor(i / 200)}.${(i % 200) + 10}`,
          ...(i % 5 === 0 ? { routes: [`192.168.${i % 250}.0/24`] } : {}),
        }),
      );
      const otherNodes = await inParallel(Array.from({ length: 40 }, (_, i) => i), 6, (i) =>
        makeNode(base, other, { name: `o${i}`, overlay_ip: `10.2.0.${i + 10}`, public_ip: `198.51.100.${i + 1}` }),
      );
      // Updates and deletes.
      await inParallel(bigNodes.slice(0, 40), 4, (n, i) =>
        expectStatus(call(base, 'PATCH', `/api/v1/nodes/${n.id}`, { headers: big.admin, json: { mtu: 1400 + i, public_ip: `203.0.113.${i + 1}` } }), 200, 'patch'),
      );
      await inParallel(otherNodes.slice(30), 4, (n) =>
        expectStatus(call(base, 'DELETE', `/api/v1/nodes/${n.id}`, { headers: other.admin }), 204, 'node delete'),
      );
      await inParallel(otherNodes.slice(0, 10), 4, (n, i) =>
        expectStatus(call(base, 'PATCH', `/api/v1/nodes/${n.id}`, { headers: other.admin, json: { name: `renamed-${i}`, routes: ['172.16.0.0/16'] } }), 200, 'patch'),
      );
      // Node routes, set by the nodes themselves.
      for (const n of otherNodes.slice(0, 5)) {
        await expectStatus(
          call(base, 'PUT', '/api/v1/routes', { headers: { 'x-nebulagc-node-token': n.token }, json: { routes: ['10.99.0.0/16', `10.98.${otherNodes.indexOf(n)}.0/24`] } }),
          200,
          'routes',
        );
      }
      // Topology changes.
      for (const [i, n] of otherNodes.slice(0, 3).entries()) {
        await expectStatus(
          call(base, 'POST', '/api/v1/topology/lighthouses', { headers: other.admin, json: { node_id: n.id, public_ip: `192.0.2.${i + 1}`, port: 4242 + i } }),
          200,
          'lighthouse',
        );
      }
      await expectStatus(call(base, 'POST', '/api/v1/topology/relays', { headers: other.admin, json: { node_id: otherNodes[5]!.id } }), 200, 'relay');
      await expectStatus(call(base, 'DELETE', `/api/v1/topology/lighthouses/${otherNodes[1]!.id}`, { headers: other.admin }), 200, 'lighthouse delete');
      await expectStatus(call(base, 'POST', '/api/v1/topology/relays', { headers: big.admin, json: { node_id: bigNodes[1]!.id } }), 200, 'relay');
      await expectStatus(call(base, 'POST', `/api/v1/clusters/${other.clusterId}/rotate-token`, { headers: op }), 200, 'rotate');

      // Bundles: small and multi-MiB, then old versions deleted (the database shrinks inside).
      await uploadBundle(base, big, await validBundle());
      await uploadBundle(base, big, await bigBundle(3 * MiB));
      await uploadBundle(base, big, await validBundle([{ name: 'extra/notes.txt', content: 'v3' }]));
      const o1 = await uploadBundle(base, other, await bigBundle(4 * MiB));
      const o2 = await uploadBundle(base, other, await bigBundle(5 * MiB));
      await uploadBundle(base, other, await bigBundle(2 * MiB));
      await expectStatus(call(base, 'DELETE', `/api/v1/config/bundles/${o1}`, { headers: other.admin }), 204, 'bundle delete');
      await expectStatus(call(base, 'DELETE', `/api/v1/config/bundles/${o2}`, { headers: other.admin }), 204, 'bundle delete');

      // A schema-changing "migration" from another process, with the master running.
      const ext = new Database(master.dbPath);
      try {
        ext.pragma('busy_timeout = 10000');
        ext.exec('CREATE TABLE extra_x (id INTEGER PRIMARY KEY, v TEXT NOT NULL)');
        const ins = ext.prepare('INSERT INTO extra_x (v) VALUES (?)');
        ext.transaction(() => {
          for (let i = 0; i < 3000; i++) ins.run(`row-${i}-${'x'.repeat(i % 200)}`);
        })();
        ext.exec('CREATE INDEX extra_x_v ON extra_x (v)');
        ext.exec('CREATE TABLE extra_y (a INTEGER, b BLOB); INSERT INTO extra_y VALUES (1, randomblob(100000))');
        ext.exec('ALTER TABLE extra_x ADD COLUMN w INTEGER DEFAULT 7');
        ext.exec('DROP TABLE extra_y');
        ext.exec('DELETE FROM extra_x WHERE id % 3 = 0');
      } finally {
        ext.close();
      }

      // Shrink: the big cluster goes, with its many nodes and bundle versions.
      await expectStatus(call(base, 'DELETE', `/api/v1/clusters/${big.clusterId}`, { headers: op }), 204, 'cluster delete');
      await expectStatus(call(base, 'DELETE', `/api/v1/tenants/${big.tenantId}`, { headers: op }), 204, 'tenant delete');

      // VACUUM from the CLI (another process), while the API keeps writing.
      const during = writeStream(() => base, other, 'during-vacuum');
      const compact = await runCli(['db', 'compact'], { NEBULAGC_DB_PATH: master.dbPath, NEBULAGC_HMAC_SECRET: TEST_SECRET });
      await during.stop();
      assert.equal(compact.code, 0, `db compact failed:\n${compact.out}`);
      const sizes = JSON.parse(compact.out.slice(compact.out.indexOf('{'))) as { before_bytes: number; after_bytes: number };
      assert.equal(during.failures, 0, `writes failed while the CLI vacuumed\n${fx.logs()}`);

      // A few writes after it all.
      for (let i = 0; i < 5; i++) await makeNode(base, other, { name: `after-${i}` });

      await sleep(200);
      const pos = await assertIdenticalLive(fx, master, [r1, r2]);
      const view = await apiView(base, other);
      for (const r of [r1, r2]) {
        assert.deepEqual(await apiView(r.url, other), view, `${r.name} answers reads differently from the master`);
        assert.equal((await call(r.url, 'GET', `/api/v1/clusters/${big.clusterId}`, { headers: op })).status, 404);
      }
      const extraRows = (dbPath: string): unknown => {
        const db = new Database(dbPath, { readonly: true });
        try {
          return db.prepare('SELECT count(*) AS n, sum(w) AS w FROM extra_x').get();
        } finally {
          db.close();
        }
      };
      assert.deepEqual(extraRows(r1.dbPath), extraRows(master.dbPath));

      await Promise.all([master, r1, r2].map((n) => n.stop('SIGINT')));
      assertIdenticalFiles(master, [r1, r2]);
      const masterBytes = readFileSync(master.dbPath).length;
      t.diagnostic(
        `mixed workload: txid ${pos.txid}, db ${(masterBytes / MiB).toFixed(1)} MiB; VACUUM ${sizes.before_bytes} -> ${sizes.after_bytes} bytes; ${during.count} writes during it`,
      );
    } finally {
      await fx.cleanup();
    }
  });

  it('2. a replica killed with SIGKILL mid-stream catches up from the log (no snapshot) and ends identical', { timeout: 90_000 }, async () => {
    const fx = new Fixture('repl-kill9');
    try {
      const master = await fx.master();
      let replica = await fx.replica('r1', master);
      const k = await makeCluster(master.url, 'kill9');
      await waitCaughtUp(fx, master, [replica]);

      const stream = writeStream(() => master.url, k, 'w', { bundleEvery: 40 });
      await waitUntil(() => stream.count >= 100, 20_000);
      // Make sure the kill lands while records are arriving.
      const before = (await positionOf(replica))!.txid;
      await waitUntil(async () => (await positionOf(replica))!.txid > before + 5, 5_000, 10);
      await replica.kill9();
      const atKill = stream.count;
      await waitUntil(() => stream.count >= atKill + 100, 20_000);
      replica = await fx.restart(replica);
      await waitUntil(() => stream.count >= atKill + 200, 20_000);
      await stream.stop();
      assert.equal(stream.failures, 0, 'the master refused writes');

      await assertIdenticalLive(fx, master, [replica]);
      const ids = await nodeIds(replica.url, k);
      for (const id of stream.acked) assert.ok(ids.has(id), `acknowledged node ${id} missing on the replica`);
      const text = await metricsText(replica);
      assert.equal(metric(text, 'nebulagc_replication_snapshots_total'), 0, 'the restarted replica took a snapshot');
      // Killed between a commit and its sync, it checks the overlap against its file; either way no snapshot.
      const out = replica.output();
      assert.match(out, /replica copy opened|replica copy is ahead of its position file/);
      if (/ahead of its position file/.test(out)) assert.match(out, /replica copy verified again/, 'a replaying copy is served again once its checksum matches');
      assert.ok(metric(text, 'nebulagc_replication_transactions_total')! > 0, 'the restarted replica applied nothing');
    } finally {
      await fx.cleanup();
    }
  });

  it('3. a replica down past log retention resyncs from a snapshot and ends identical', { timeout: 120_000 }, async () => {
    const fx = new Fixture('repl-retention');
    try {
      const master = await fx.master({
        NEBULAGC_REPLICATION_LOG_BYTES: '65536',
        NEBULAGC_REPLICATION_MEMORY_BYTES: '65536',
        NEBULAGC_REPLICATION_LOG_MAX_AGE_S: '1',
      });
      let replica = await fx.replica('r1', master);
      const k = await makeCluster(master.url, 'retention');
      for (let i = 0; i < 10; i++) await makeNode(master.url, k, { name: `early-${i}` });
      const stoppedAt = await waitCaughtUp(fx, master, [replica]);
      await replica.stop();

      // Segments are 16 MiB and the newest is never dropped: write past one whole segment
      // (multi-MiB bundle records), so the one holding the replica's position can go.
      let previous: number | undefined;
      for (let i = 0; i < 5; i++) {
        const v = await uploadBundle(master.url, k, await bigBundle(4 * MiB));
        if (previous !== undefined) await expectStatus(call(master.url, 'DELETE', `/api/v1/config/bundles/${previous}`, { headers: k.admin }), 204, 'bundle delete');
        previous = v;
      }
      for (let i = 0; i < 10; i++) await makeNode(master.url, k, { name: `late-${i}` });
      // The log is trimmed on a 10 s timer.
      const trimmed = await waitUntil(() => (segmentsOf(master)[0]?.firstTxid ?? 0) > stoppedAt.txid + 1, 25_000, 200);
      assert.ok(trimmed, `the log still holds txid ${stoppedAt.txid + 1}: ${JSON.stringify(segmentsOf(master))}`);

      replica = await fx.restart(replica);
      await assertIdenticalLive(fx, master, [replica]);
      const text = await metricsText(replica);
      assert.equal(metric(text, 'nebulagc_replication_snapshots_total'), 1, 'the replica did not resync from a snapshot');
      assert.match(replica.output(), /snapshot installed/);
      const ids = await nodeIds(replica.url, k);
      assert.deepEqual(ids, await nodeIds(master.url, k));
      await Promise.all([master, replica].map((n) => n.stop('SIGINT')));
      assertIdenticalFiles(master, [replica]);
    } finally {
      await fx.cleanup();
    }
  });

  it('4. replicas follow a master restarted with SIGTERM, then with SIGKILL, losing nothing', { timeout: 120_000 }, async (t) => {
    const fx = new Fixture('repl-master-restart');
    try {
      let master = await fx.master();
      const r1 = await fx.replica('r1', master);
      const r2 = await fx.replica('r2', master);
      const k = await makeCluster(master.url, 'restart');
      const acked: string[] = [];
      for (let i = 0; i < 30; i++) acked.push((await makeNode(master.url, k, { name: `a-${i}` })).id);
      const before = await waitCaughtUp(fx, master, [r1, r2]);
      const snapshotsBefore = await Promise.all([r1, r2].map(async (r) => metric(await metricsText(r), 'nebulagc_replication_snapshots_total')));

      // A clean restart (SIGINT: no handover, see the roles tests for SIGTERM's): the master
      // comes back at the same position; replicas resume.
      await master.stop('SIGINT');
      master = await fx.restart(master);
      const resumed = await positionOf(master);
      assert.deepEqual(resumed, before, 'the master did not restart at its last position');
      for (let i = 0; i < 30; i++) acked.push((await makeNode(master.url, k, { name: `b-${i}` })).id);
      await assertIdenticalLive(fx, master, [r1, r2]);
      const snapshotsAfter = await Promise.all([r1, r2].map(async (r) => metric(await metricsText(r), 'nebulagc_replication_snapshots_total')));
      assert.deepEqual(snapshotsAfter, snapshotsBefore, 'a replica needed a snapshot after a clean master restart');

      // A crash in the middle of writes.
      const m = master;
      const stream = writeStream(() => m.url, k, 'c', { width: 4 });
      await waitUntil(() => stream.count >= 60, 20_000);
      await master.kill9();
      await stream.stop();
      acked.push(...stream.acked);
      master = await fx.restart(master);
      for (let i = 0; i < 30; i++) acked.push((await makeNode(master.url, k, { name: `d-${i}` })).id);
      await assertIdenticalLive(fx, master, [r1, r2]);
      for (const n of [master, r1, r2]) {
        const ids = await nodeIds(n.url, k);
        const missing = acked.filter((id) => !ids.has(id));
        assert.deepEqual(missing, [], `${n.name} lost acknowledged writes`);
      }
      const snapshotsEnd = await Promise.all([r1, r2].map(async (r) => metric(await metricsText(r), 'nebulagc_replication_snapshots_total')));
      // The master's own log of the killed run: did it have to drop its history?
      const reset = /does not match the replication log/.test(master.output());
      t.diagnostic(`master kill -9: ${stream.count} writes acknowledged before it; log reset on restart: ${reset}; replica snapshots ${JSON.stringify(snapshotsAfter)} -> ${JSON.stringify(snapshotsEnd)}`);
      await Promise.all([master, r1, r2].map((n) => n.stop('SIGINT')));
      assertIdenticalFiles(master, [r1, r2]);
      // Replicas are streamed only records already in the log's file, and a master whose
      // database is ahead of its log bridges the gap from the WAL: no reset, no snapshot.
      assert.equal(reset, false, 'the master reset its replication log after kill -9');
      assert.deepEqual(snapshotsEnd, snapshotsAfter, 'replicas took snapshots after the master was killed');
    } finally {
      await fx.cleanup();
    }
  });
});

describe('a live master with two replicas', () => {
  let fx: Fixture;
  let master: ServerProcess;
  let r1: ServerProcess;
  let r2: ServerProcess;
  let k: ClusterRef;

  before(async () => {
    fx = new Fixture('repl-live');
    master = await fx.master();
    r1 = await fx.replica('r1', master, { NEBULAGC_MIN_TXID_WAIT_MS: '300' });
    r2 = await fx.replica('r2', master);
    k = await makeCluster(master.url, 'live');
    for (let i = 0; i < 5; i++) await makeNode(master.url, k, { name: `n-${i}` });
    await waitCaughtUp(fx, master, [r1, r2]);
  });
  after(() => fx.cleanup());

  it('5. read-your-writes: X-NebulaGC-Min-TxID from a master write sees it on a replica; a future txid gets 503 STALE_REPLICA', { timeout: 60_000 }, async () => {
    for (let i = 0; i < 20; i++) {
      const w = await expectStatus(call(master.url, 'POST', '/api/v1/nodes', { headers: k.admin, json: { name: `ryw-${i}`, mtu: 1500 + i } }), 201, 'write');
      const txid = w.headers.get('x-nebulagc-txid');
      assert.match(txid ?? '', /^\d+$/, 'a write on the master carries X-NebulaGC-TxID');
      const r = await call(r1.url, 'GET', `/api/v1/nodes/${w.body.node.id}`, { headers: { ...k.admin, 'x-nebulagc-min-txid': txid! } });
      assert.equal(r.status, 200, `read ${i} on the replica: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.mtu, 1500 + i);
      assert.ok(Number(r.headers.get('x-nebulagc-txid')) >= Number(txid), 'the replica answered from an older position');
    }
    const head = (await positionOf(master))!.txid;
    const started = Date.now();
    const stale = await call(r1.url, 'GET', '/api/v1/tenants', { headers: { ...op, 'x-nebulagc-min-txid': String(head + 1_000_000) } });
    const waited = Date.now() - started;
    assert.equal(stale.status, 503, JSON.stringify(stale.body));
    assert.equal(stale.body.code, 'STALE_REPLICA');
    assert.ok(stale.headers.get('retry-after'), 'STALE_REPLICA without Retry-After');
    assert.ok(waited >= 250 && waited < 5000, `waited ${waited} ms with NEBULAGC_MIN_TXID_WAIT_MS=300`);
    const bad = await call(r1.url, 'GET', '/api/v1/tenants', { headers: { ...op, 'x-nebulagc-min-txid': 'soon' } });
    assert.equal(bad.status, 400);
    const plain = await call(r1.url, 'GET', '/api/v1/tenants', { headers: op });
    assert.equal(plain.status, 200);
  });

  it('6. health, metrics and /cluster/* report roles, positions and lag', { timeout: 60_000 }, async () => {
    const pos = await waitCaughtUp(fx, master, [r1, r2]);

    const mh = await health(master);
    assert.equal(mh.ha_mode, 'master');
    assert.equal(mh.durable_position, undefined, 'only replicas report a durable position');
    assert.equal(mh.replicas, 2);
    assert.equal(mh.writable, true);
    assert.equal(mh.master_url, master.url);
    for (const r of [r1, r2]) {
      const h = await health(r);
      assert.equal(h.ha_mode, 'replica');
      assert.equal(h.node_id, r.name);
      assert.equal(h.master_url, master.url);
      assert.equal(h.position.txid, pos.txid);
      // Durable a sync after it is visible: caught up and idle, the two agree.
      assert.ok(await waitUntil(async () => (await health(r)).durable_position?.txid === pos.txid, 5_000), 'the durable position reaches the applied one');
      assert.equal((await health(r)).durable_position.checksum, pos.checksum);
      assert.equal(h.lag.transactions, 0);
      assert.equal(typeof h.lag.ms, 'number');
      assert.equal(h.status, 'healthy');
      assert.equal(h.replicas, undefined);
    }

    assert.equal((await call(master.url, 'GET', '/health/master')).status, 200);
    assert.equal((await call(master.url, 'GET', '/health/replica')).status, 503);
    assert.equal((await call(master.url, 'GET', '/health/replica?max_lag_ms=0')).status, 503);
    for (const r of [r1, r2]) {
      assert.equal((await call(r.url, 'GET', '/health/master')).status, 503);
      assert.equal((await call(r.url, 'GET', '/health/replica')).status, 200);
      assert.equal((await call(r.url, 'GET', '/health/ready')).status, 200);
      // Caught up and hearing heartbeats: no lag at all, so even a zero threshold passes.
      assert.ok(await waitUntil(async () => (await call(r.url, 'GET', '/health/replica?max_lag_ms=0')).status === 200, 5_000));
    }

    // The master's view of its replicas, once their acknowledgements arrive.
    let listed: any;
    const acked = await waitUntil(async () => {
      listed = (await call(master.url, 'GET', '/cluster/replicas', { headers: op })).body;
      return listed.replicas.length === 2 && listed.replicas.every((x: any) => x.position.txid === pos.txid);
    }, 10_000);
    assert.ok(acked, `acks did not reach the master's position ${pos.txid}: ${JSON.stringify(listed)}`);
    const byId = new Map((listed.replicas as any[]).map((x) => [x.id, x]));
    for (const r of [r1, r2]) {
      const x = byId.get(r.name);
      assert.ok(x, `${r.name} missing from /cluster/replicas`);
      assert.equal(x.connected, true);
      assert.equal(x.url, r.url);
      assert.equal(x.position.checksum, pos.checksum);
      assert.equal(x.lag.transactions, 0);
      assert.equal(x.lag.bytes, 0);
      assert.ok(x.last_ack_at);
    }
    assert.equal((await call(master.url, 'GET', '/cluster/replicas')).status, 401);
    const status = (await call(master.url, 'GET', '/cluster/status', { headers: op })).body;
    assert.equal(status.ha_mode, 'master');
    assert.equal(status.replicas.length, 2);
    const rstatus = (await call(r1.url, 'GET', '/cluster/status', { headers: op })).body;
    assert.equal(rstatus.ha_mode, 'replica');
    assert.equal(rstatus.position.txid, pos.txid);
    assert.equal(rstatus.master_url, master.url);

    const mm = await metricsText(master);
    assert.equal(metric(mm, 'nebulagc_ha_replicas_total'), 2);
    assert.equal(metric(mm, 'nebulagc_ha_is_master'), 1);
    for (const r of [r1, r2]) {
      for (const name of ['nebulagc_replication_replica_lag_transactions', 'nebulagc_replication_replica_lag_bytes', 'nebulagc_replication_replica_lag_seconds']) {
        assert.equal(metric(mm, name, `replica="${r.name}"`), 0, `${name} for ${r.name} on the master`);
      }
    }
    assert.ok(metric(mm, 'nebulagc_replication_bytes_total', 'direction="sent"')! > 0);
    const rm = await metricsText(r1);
    assert.equal(metric(rm, 'nebulagc_ha_is_master'), 0);
    assert.ok(metric(rm, 'nebulagc_ha_last_heartbeat')! > 0, 'no stream heartbeat seen on the replica');
    assert.equal(metric(rm, 'nebulagc_replication_position_txid'), pos.txid);
    assert.ok(metric(rm, 'nebulagc_replication_bytes_total', 'direction="received"')! > 0);
    // Every transaction the replica applied was observed once visible and once durable.
    const applied = metric(rm, 'nebulagc_replication_apply_lag_seconds_count')!;
    assert.ok(applied > 0, 'no apply lag observed');
    assert.equal(metric(rm, 'nebulagc_replication_durable_lag_seconds_count'), applied);

    // Silence the master: the replica keeps serving, and reports that it can no longer vouch
    // for its lag.
    await master.kill9();
    const lagging = await waitUntil(async () => (await call(r1.url, 'GET', '/health/replica?max_lag_ms=1000')).status === 503, 10_000, 100);
    assert.ok(lagging, '/health/replica stayed 200 with the master gone');
    const h = await health(r1);
    assert.ok(h.lag.ms === null || h.lag.ms > 1000, `lag ${JSON.stringify(h.lag)}`);
    assert.equal((await call(r1.url, 'GET', '/api/v1/tenants', { headers: op })).status, 200);
  });
});
