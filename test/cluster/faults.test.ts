import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it, type TestContext } from 'node:test';
import Database from 'better-sqlite3';
import { secretFingerprint } from '../../server/src/ha/node.js';
import {
  CorruptRecordError,
  decodeRecord,
  encodeHeartbeat,
  encodeTx,
  RECORD_HEARTBEAT,
  RECORD_FORMAT,
  RECORD_TX,
} from '../../server/src/replication/wire/record.js';
import { clusterDir, REPLICATION_SECRET, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { assertSamePages, integrity, pages } from '../helpers/db-files.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { call, TEST_ADMIN_TOKEN, TEST_SECRET } from '../helpers/server.js';

/**
 * Replication under faults, with real processes on 127.0.0.1: interrupted snapshots, records
 * damaged on the wire (through test/helpers/fault-proxy.ts), writes sent to replicas, and the
 * internal endpoints' authentication. Each test owns its processes, proxies and temp dirs and
 * removes them even when it fails.
 */

const OP = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
const SNAPSHOT = /\/internal\/v1\/replication\/snapshot/;
const STREAM = /\/internal\/v1\/replication\/stream/;
/** Header record of a snapshot: envelope (8) + type (1) + epoch, txid, checksum, page size, page count (28). */
const SNAPSHOT_HEADER_BYTES = 37;
/** A TX record: length (4) + type (1) + fixed fields (40), then per page: pgno (4) + data. */
const FIRST_PAGE_DATA = 4 + 1 + 40 + 4;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const tail = (n: ServerProcess, chars = 4000): string => `--- ${n.name} output (tail) ---\n${n.output().slice(-chars)}`;

// ---------------------------------------------------------------------------------------------
// Helpers

/** A test's processes, proxies and temp dir, all removed after it, pass or fail. */
function scope(t: TestContext, label: string) {
  const dir = clusterDir(label);
  const procs: ServerProcess[] = [];
  const proxies: FaultProxy[] = [];
  t.after(async () => {
    for (const p of procs) await p.kill9().catch(() => {});
    for (const p of proxies) await p.close().catch(() => {});
    dir.remove();
  });
  return {
    root: dir.root,
    track(n: ServerProcess): ServerProcess {
      procs.push(n);
      return n;
    },
    async node(name: string, env: Record<string, string>): Promise<ServerProcess> {
      const n = await startNode(name, dir.root, { NEBULAGC_DB_SYNCHRONOUS: 'NORMAL', ...env });
      procs.push(n);
      return n;
    },
    async proxy(target: string): Promise<FaultProxy> {
      const p = await startFaultProxy(target);
      proxies.push(p);
      return p;
    },
  };
}

interface Health {
  ha_mode: string;
  master_url: string | null;
  position: { epoch: number; txid: number; checksum: string } | null;
  lag: { transactions: number; ms: number | null };
  checks: { database: { ok: boolean } };
}

async function health(url: string): Promise<Health> {
  return (await fetch(`${url}/health`, { signal: AbortSignal.timeout(5000) })).json() as Promise<Health>;
}

/** The replica serves a verified copy at exactly the master's position. */
async function caughtUp(master: ServerProcess, replica: ServerProcess): Promise<boolean> {
  const [m, r] = await Promise.all([health(master.url), health(replica.url)]);
  return !!m.position && !!r.position && r.checks.database.ok && r.position.txid === m.position.txid && r.position.checksum === m.position.checksum;
}

async function waitCaughtUp(master: ServerProcess, replica: ServerProcess, timeoutMs = 15_000): Promise<void> {
  const ok = await waitUntil(() => caughtUp(master, replica), timeoutMs);
  if (!ok) {
    const [m, r] = await Promise.all([health(master.url).catch((e) => String(e)), health(replica.url).catch((e) => String(e))]);
    assert.fail(`${replica.name} did not catch up with the master in ${timeoutMs} ms\nmaster: ${JSON.stringify(m)}\nreplica: ${JSON.stringify(r)}\n${tail(replica)}`);
  }
}

async function createTenant(url: string, name: string): Promise<string> {
  const r = await call(url, 'POST', '/api/v1/tenants', { headers: OP, json: { name } });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.id as string;
}

/** Tenant names as a node serves them, or its error. */
async function tenantNames(url: string): Promise<{ status: number; names?: string[]; code?: string }> {
  const r = await call(url, 'GET', '/api/v1/tenants?limit=1000', { headers: OP });
  if (r.status !== 200) return { status: r.status, code: r.body?.code };
  return { status: 200, names: (r.body.tenants as { name: string }[]).map((t) => t.name).sort() };
}

/** Byte-identical pages and integrity_check ok on both. */
function assertIdentical(master: ServerProcess, replica: ServerProcess): void {
  assertSamePages(pages(master.dbPath), pages(replica.dbPath), `${replica.name} vs master`);
  assert.equal(integrity(master.dbPath), 'ok');
  assert.equal(integrity(replica.dbPath), 'ok');
}

/** fetch that never waits on a long-lived body: JSON is parsed, anything else is cancelled. */
async function probe(
  base: string,
  method: string,
  url: string,
  headers: Record<string, string>,
  json?: unknown,
): Promise<{ status: number; headers: Headers; body: any }> {
  const res = await fetch(base + url, {
    method,
    headers: json === undefined ? headers : { ...headers, 'content-type': 'application/json' },
    body: json === undefined ? undefined : JSON.stringify(json),
    redirect: 'manual',
    signal: AbortSignal.timeout(5000),
  });
  if ((res.headers.get('content-type') ?? '').includes('json')) return { status: res.status, headers: res.headers, body: await res.json() };
  await res.body?.cancel();
  return { status: res.status, headers: res.headers, body: undefined };
}

// ---------------------------------------------------------------------------------------------

describe('the fault proxy itself', () => {
  const body = Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 7) & 0xff));
  const hb = (txid: number): Buffer => encodeHeartbeat({ epoch: 1, txid, checksum: '0123456789abcdef', masterTimeMs: 1 });
  const txRec = encodeTx({
    epoch: 1,
    txid: 3,
    checksum: 'fedcba9876543210',
    pageSize: 512,
    dbSize: 4,
    commitTimeMs: 2,
    pages: [
      { pgno: 2, data: Buffer.alloc(512, 0x22) },
      { pgno: 1, data: Buffer.alloc(512, 0x11) },
    ],
  });
  const records = Buffer.concat([hb(1), hb(2), txRec, hb(4)]);
  let server: http.Server;
  let target: string;

  before(async () => {
    server = http.createServer((req, res) => {
      if (req.url === '/len') {
        res.writeHead(200, { 'content-length': String(body.length), 'content-type': 'application/octet-stream' });
        res.end(body);
      } else if (req.url === '/records') {
        // Chunked, with chunk boundaries inside length prefixes and bodies.
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const cuts = [0, 2, 30, 50, 51, 300, records.length - 3, records.length];
        let i = 0;
        const next = (): void => {
          if (i + 1 >= cuts.length) return void res.end();
          res.write(records.subarray(cuts[i]!, cuts[i + 1]!));
          i++;
          setTimeout(next, 2);
        };
        next();
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ url: req.url }));
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    target = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  /** GET through a keep-alive agent; the body as received, or the error that ended it. */
  function get(url: string, agent: http.Agent): Promise<{ body: Buffer; error?: string }> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      const req = http.get(url, { agent }, (res) => {
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ body: Buffer.concat(chunks) }));
        res.on('error', (e) => resolve({ body: Buffer.concat(chunks), error: e.message }));
        res.on('aborted', () => resolve({ body: Buffer.concat(chunks), error: 'aborted' }));
      });
      req.on('error', (e) => resolve({ body: Buffer.concat(chunks), error: e.message }));
    });
  }

  it('passes bytes through unchanged, over reused keep-alive connections', async () => {
    const proxy = await startFaultProxy(target);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let i = 0; i < 3; i++) {
        assert.ok((await get(`${proxy.url}/len`, agent)).body.equals(body));
        assert.ok((await get(`${proxy.url}/records`, agent)).body.equals(records));
        assert.deepEqual(JSON.parse((await get(`${proxy.url}/json?i=${i}`, agent)).body.toString()), { url: `/json?i=${i}` });
      }
      assert.equal(proxy.count('request'), 9);
      assert.equal(proxy.count('response'), 9);
    } finally {
      agent.destroy();
      await proxy.close();
    }
  });

  it('cuts a matching response after exactly N payload bytes, and only that one', async () => {
    const proxy = await startFaultProxy(target);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      proxy.fault = { kind: 'cut', match: /\/len/, counting: 'payload', afterBytes: (r) => (r.index === 0 ? 1234 : r.contentLength! - 1) };
      assert.ok((await get(`${proxy.url}/json`, agent)).body.length > 0, 'not matching: untouched');
      const a = await get(`${proxy.url}/len`, agent);
      assert.ok(a.error, 'the client sees the cut');
      assert.ok(a.body.equals(body.subarray(0, 1234)), `got ${a.body.length} bytes`);
      const b = await get(`${proxy.url}/len`, agent);
      assert.ok(b.error);
      assert.ok(b.body.equals(body.subarray(0, body.length - 1)), `got ${b.body.length} bytes`);
      proxy.fault = undefined;
      assert.ok((await get(`${proxy.url}/len`, agent)).body.equals(body));
      assert.equal(proxy.count('cut', /\/len/), 2);
    } finally {
      agent.destroy();
      await proxy.close();
    }
  });

  it('flips a chosen payload byte, also inside chunked bodies', async () => {
    const proxy = await startFaultProxy(target);
    const agent = new http.Agent({ keepAlive: true });
    try {
      proxy.fault = { kind: 'flip', match: /\/len|\/records/, payloadOffset: 40, mask: 0x10 };
      const a = await get(`${proxy.url}/len`, agent);
      const want = Buffer.from(body);
      want[40]! ^= 0x10;
      assert.ok(a.body.equals(want));
      const b = await get(`${proxy.url}/records`, agent);
      const wantR = Buffer.from(records);
      wantR[40]! ^= 0x10;
      assert.ok(b.body.equals(wantR));
    } finally {
      agent.destroy();
      await proxy.close();
    }
  });

  it('damages the next record of a type: a body byte, or its length prefix', async () => {
    const proxy = await startFaultProxy(target);
    const agent = new http.Agent({ keepAlive: true });
    const split = (buf: Buffer): Buffer[] => {
      const out: Buffer[] = [];
      for (let at = 0; at < buf.length; ) {
        const n = buf.readUInt32BE(at) + 8;
        out.push(buf.subarray(at, at + n));
        at += n;
      }
      return out;
    };
    try {
      proxy.fault = { kind: 'flipRecord', match: /\/records/, recordType: RECORD_TX, offsetInRecord: FIRST_PAGE_DATA + 100 };
      const a = await get(`${proxy.url}/records`, agent);
      const recs = split(a.body);
      assert.equal(recs.length, 4);
      assert.equal(decodeRecord(recs[0]!).type, RECORD_HEARTBEAT);
      assert.throws(() => decodeRecord(recs[2]!), CorruptRecordError);
      assert.ok(recs[3]!.equals(hb(4)));
      const diff = [...a.body].flatMap((x, i) => (x === records[i] ? [] : [i]));
      assert.deepEqual(diff, [hb(1).length * 2 + FIRST_PAGE_DATA + 100]);
      // times: 1 by default, so the next response is untouched.
      assert.ok((await get(`${proxy.url}/records`, agent)).body.equals(records));

      proxy.fault = { kind: 'flipRecord', match: /\/records/, recordType: RECORD_TX, offsetInRecord: 2, mask: 0x01 };
      const b = await get(`${proxy.url}/records`, agent);
      const at = hb(1).length * 2;
      assert.equal(b.body.readUInt32BE(at), records.readUInt32BE(at) + 256, 'length prefix grew by 256');
      assert.equal(proxy.count('flip'), 2);
    } finally {
      agent.destroy();
      await proxy.close();
    }
  });

  it('refuses matching requests, and cuts open connections on demand', async () => {
    const proxy = await startFaultProxy(target);
    const agent = new http.Agent({ keepAlive: true });
    try {
      proxy.fault = { kind: 'refuse', match: /\/json/ };
      const a = await get(`${proxy.url}/json`, agent);
      assert.ok(a.error, 'refused');
      assert.ok((await get(`${proxy.url}/len`, agent)).body.equals(body));
      proxy.fault = undefined;
      const slow = get(`${proxy.url}/records`, agent);
      await waitUntil(() => proxy.count('request', /\/records/) === 1, 2000, 1);
      assert.equal(proxy.cutAll(/\/records/), 1);
      assert.ok((await slow).error, 'cut on demand');
    } finally {
      agent.destroy();
      await proxy.close();
    }
  });
});

describe('replication faults between real processes', { timeout: 110_000 }, () => {
  it('a snapshot interrupted mid-transfer leaves the old copy serving, then completes', { timeout: 60_000 }, async (t) => {
    const s = scope(t, 'fault-snap');
    let master = await s.node('master', { NEBULAGC_HA_MODE: 'master' });
    const proxy = await s.proxy(master.url);
    let replica = await s.node('replica', { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: proxy.url });
    for (let i = 0; i < 30; i++) await createTenant(master.url, `old-${String(i).padStart(2, '0')}`);
    await waitCaughtUp(master, replica);
    const oldNames = (await tenantNames(master.url)).names!;
    assert.deepEqual((await tenantNames(replica.url)).names, oldNames);

    // The replica goes down and the master moves on; then the master's database is changed while
    // it is down (as an operator's repair or restore would), so its log no longer vouches for
    // the replica's position: the replica must take a snapshot.
    await replica.stop();
    const oldPages = pages(replica.dbPath);
    for (let i = 0; i < 5; i++) await createTenant(master.url, `new-${i}`);
    await master.stop();
    const offline = new Database(master.dbPath);
    offline.exec('CREATE TABLE ops_note (note TEXT); INSERT INTO ops_note VALUES (\'edited while the master was down\')');
    offline.close();
    master = s.track(await master.restart());
    assert.match(master.output(), /does not match the replication log/, 'the master saw its history break');

    // Every snapshot download is cut, each at a different byte: right after the HTTP headers,
    // inside the header record, just into page 2, half-way, and one byte short of the end.
    const cutPoints = (len: number): number[] => [0, 20, SNAPSHOT_HEADER_BYTES + 4096 + 1, Math.floor(len / 2), len - 1];
    const bootstrapRequests = proxy.count('request', SNAPSHOT);
    proxy.fault = { kind: 'cut', match: SNAPSHOT, counting: 'payload', afterBytes: (r) => cutPoints(r.contentLength!)[r.index % 5]! };
    replica = s.track(await replica.restart());
    const tmp = `${replica.dbPath}.snapshot-tmp`;

    let reads = 0;
    let tmpChecks = 0;
    let lastCuts = 0;
    const deadline = Date.now() + 25_000;
    while (proxy.count('cut', SNAPSHOT) < 5) {
      assert.ok(Date.now() < deadline, `only ${proxy.count('cut', SNAPSHOT)} snapshot downloads were cut\n${tail(replica)}`);
      // The old copy keeps serving, unchanged.
      const r = await tenantNames(replica.url);
      assert.equal(r.status, 200, `read during the failing snapshots: ${JSON.stringify(r)}\n${tail(replica)}`);
      assert.deepEqual(r.names, oldNames, 'the replica serves its old copy');
      assert.equal((await fetch(`${replica.url}/health/ready`)).status, 200, '/health/ready while snapshots fail');
      reads++;
      // Between attempts (a cut seen, no new request since), the temp file must be gone.
      const cuts = proxy.count('cut', SNAPSHOT);
      if (cuts > lastCuts) {
        lastCuts = cuts;
        const requests = proxy.count('request', SNAPSHOT) - bootstrapRequests;
        await sleep(40);
        if (requests === cuts && proxy.count('request', SNAPSHOT) - bootstrapRequests === requests) {
          assert.equal(existsSync(tmp), false, `${tmp} left behind after an interrupted download`);
          tmpChecks++;
        }
      }
      await sleep(15);
    }
    assert.ok(reads > 0);
    assert.ok(
      tmpChecks > 0,
      `the temp file was checked between attempts; proxy saw:\n${proxy.events
        .filter((e) => SNAPSHOT.test(e.requestLine))
        .map((e) => `${e.at} ${e.kind} ${e.detail ?? ''}`)
        .join('\n')}`,
    );
    assert.equal(proxy.count('response', SNAPSHOT) >= 5, true);
    await waitUntil(() => /snapshot download started/.test(replica.output()), 2000);
    const out = replica.output();
    assert.match(out, /the master’s log no longer reaches this copy’s position; taking a snapshot/);
    assert.match(out, /snapshot download started/, 'some attempts got past the header into the pages');
    assert.doesNotMatch(out, /snapshot installed/, 'no cut download was installed');
    assertSamePages(oldPages, pages(replica.dbPath), 'the old copy during the failing snapshots');
    t.diagnostic(`reads of the old copy while snapshots failed: ${reads}; temp-file checks: ${tmpChecks}`);

    // The fault goes away: the snapshot completes and the replica follows the master again.
    proxy.fault = undefined;
    await waitCaughtUp(master, replica, 12_000);
    // (The log line may trail the health check through the pipe.)
    assert.ok(await waitUntil(() => /snapshot installed/.test(replica.output()), 3000), `the snapshot was installed\n${tail(replica)}`);
    await createTenant(master.url, 'after-the-fault');
    await waitCaughtUp(master, replica);
    const now = await tenantNames(master.url);
    assert.deepEqual(await tenantNames(replica.url), now);
    assert.ok(now.names!.includes('new-4') && now.names!.includes('after-the-fault'));
    assert.equal(existsSync(tmp), false);
    assertIdentical(master, replica);
  });

  it('a copy changed behind the replica’s back is found at its next start and replaced by a snapshot', { timeout: 40_000 }, async (t) => {
    const s = scope(t, 'fault-tamper');
    const master = await s.node('master', { NEBULAGC_HA_MODE: 'master' });
    let replica = await s.node('replica', { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url });
    for (let i = 0; i < 10; i++) await createTenant(master.url, `t-${i}`);
    await waitCaughtUp(master, replica);
    await replica.stop();
    // Its position file still names the master's position, but the file no longer matches it:
    // at start the replica replays from that position looking for the file's checksum, and the
    // master, idle, has nothing newer to offer.
    const offline = new Database(replica.dbPath);
    offline.exec("UPDATE tenants SET name = 'tampered' WHERE name = 't-3'");
    offline.close();
    replica = s.track(await replica.restart());
    assert.ok(await waitUntil(() => /replication stream rejected/.test(replica.output()), 10_000), `the replica noticed\n${tail(replica)}`);
    assert.match(replica.output(), /ahead of its position file/);
    await waitCaughtUp(master, replica);
    assert.ok(await waitUntil(() => /snapshot installed/.test(replica.output()), 3000), `a snapshot replaced the copy\n${tail(replica)}`);
    const names = await tenantNames(replica.url);
    assert.deepEqual(names, await tenantNames(master.url));
    assert.ok(!names.names!.includes('tampered'));
    assertIdentical(master, replica);
  });

  describe('records corrupted on the wire', () => {
    let dir: ReturnType<typeof clusterDir>;
    let master: ServerProcess;
    let replica: ServerProcess;
    let proxy: FaultProxy;
    /** Every state of the tenant list the master has been in, in order: what a replica may show. */
    const states: string[][] = [];

    before(async () => {
      dir = clusterDir('fault-flip');
      master = await startNode('master', dir.root, { NEBULAGC_HA_MODE: 'master', NEBULAGC_DB_SYNCHRONOUS: 'NORMAL' });
      proxy = await startFaultProxy(master.url);
      replica = await startNode('replica', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: proxy.url, NEBULAGC_DB_SYNCHRONOUS: 'NORMAL' });
      for (let i = 0; i < 20; i++) await createTenant(master.url, `old-${String(i).padStart(2, '0')}`);
      states.push((await tenantNames(master.url)).names!);
    });
    after(async () => {
      await replica?.kill9();
      await master?.kill9();
      await proxy?.close();
      dir?.remove();
    });

    /** Writes a tenant, recording the master's next state before the write can reach anyone. */
    async function write(name: string): Promise<void> {
      states.push([...states[states.length - 1]!, name].sort());
      await createTenant(master.url, name);
      assert.deepEqual((await tenantNames(master.url)).names, states[states.length - 1]);
    }

    /** Reads the replica in a loop; every answer must be one of the master's states, or NOT_READY. */
    function reader(): { stop(): Promise<{ ok: number; notReady: number; bad: string[] }> } {
      const seen = { ok: 0, notReady: 0, bad: [] as string[] };
      let reading = true;
      const loop = (async () => {
        while (reading) {
          try {
            const r = await tenantNames(replica.url);
            if (r.status === 200) {
              if (states.some((st) => st.length === r.names!.length && st.every((n, i) => n === r.names![i]))) seen.ok++;
              else seen.bad.push(`served a list the master never had: ${JSON.stringify(r.names)}`);
            } else if (r.status === 503 && r.code === 'NOT_READY') seen.notReady++;
            else seen.bad.push(`${r.status} ${r.code}`);
          } catch (err) {
            seen.bad.push(`request failed: ${(err as Error).message}`);
          }
          await sleep(3);
        }
      })();
      return {
        async stop() {
          reading = false;
          await loop;
          return seen;
        },
      };
    }

    it('a flipped byte inside a TX record is rejected, never served, and the replica resyncs', { timeout: 40_000 }, async (t) => {
      await waitCaughtUp(master, replica);
      const r = reader();
      try {
        proxy.fault = { kind: 'flipRecord', match: STREAM, recordType: RECORD_TX, offsetInRecord: FIRST_PAGE_DATA + 100, times: 1 };
        await write('new-0');
        assert.ok(await waitUntil(() => proxy.count('flip', STREAM) === 1, 5000), 'the record passed the proxy and was damaged');
        assert.ok(await waitUntil(() => /replication stream rejected/.test(replica.output()), 10_000), `the replica noticed\n${tail(replica)}`);
        assert.match(replica.output(), /"err":"record crc mismatch"[^\n]*replication stream rejected/);
        proxy.fault = undefined;
        await waitCaughtUp(master, replica, 20_000);
        await write('new-1');
        await write('new-2');
        await waitCaughtUp(master, replica);
      } finally {
        const seen = await r.stop();
        t.diagnostic(`replica reads: ${seen.ok} correct, ${seen.notReady} NOT_READY (while it resynced), ${seen.bad.length} wrong`);
        assert.deepEqual(seen.bad, [], 'nothing wrong was served');
        assert.ok(seen.ok > 0);
      }
      assert.deepEqual((await tenantNames(replica.url)).names, states[states.length - 1]);
      assertIdentical(master, replica);
    });

    it('a flipped bit in a TX record’s length prefix is detected too, without waiting for more traffic', { timeout: 40_000 }, async (t) => {
      await waitCaughtUp(master, replica);
      const r = reader();
      const rejectedBefore = replica.output().match(/replication stream (rejected|failed)/g)?.length ?? 0;
      let healthWhileStuck: Health | undefined;
      try {
        // Bit 0 of the length's second byte: the record now claims 65,536 more bytes than it
        // has, so a framer waits for bytes that only later records (or heartbeats) can supply.
        proxy.fault = { kind: 'flipRecord', match: STREAM, recordType: RECORD_TX, offsetInRecord: 1, mask: 0x01, times: 1 };
        await write('len-0');
        assert.ok(await waitUntil(() => proxy.count('flip', STREAM) === 2, 5000), 'the record passed the proxy and was damaged');
        proxy.fault = undefined;
        await sleep(2500);
        healthWhileStuck = await health(replica.url);
        // The master is idle now: only heartbeats flow. A replica must not need ~65,536 bytes of
        // them (about 12 minutes) to notice; its heartbeat timeout should end the stream.
        const caught = await waitUntil(() => caughtUp(master, replica), 7_500);
        const rejectedAfter = replica.output().match(/replication stream (rejected|failed)/g)?.length ?? 0;
        assert.ok(
          caught,
          `the replica never recovered from a damaged length prefix within 10 s (stream errors logged: ${rejectedAfter - rejectedBefore}); ` +
            `its /health 2.5 s after the damage said ${JSON.stringify(healthWhileStuck)} while the master was at ` +
            `${JSON.stringify((await health(master.url)).position)}\n${tail(replica)}`,
        );
      } finally {
        const seen = await r.stop();
        t.diagnostic(`replica reads: ${seen.ok} correct, ${seen.notReady} NOT_READY, ${seen.bad.length} wrong`);
        assert.deepEqual(seen.bad, [], 'nothing wrong was served');
      }
      assertIdentical(master, replica);
    });
  });

  describe('writes sent to replicas, and the internal endpoints', () => {
    let dir: ReturnType<typeof clusterDir>;
    let master: ServerProcess;
    let proxy: FaultProxy;
    let redirect: ServerProcess;
    let proxied: ServerProcess;
    let rejecting: ServerProcess;
    let clusterToken: string;
    let nodeA: { id: string; token: string };
    let nodeB: { id: string; token: string };

    before(async () => {
      dir = clusterDir('fault-writes');
      const common = { NEBULAGC_DB_SYNCHRONOUS: 'NORMAL' };
      master = await startNode('master', dir.root, { ...common, NEBULAGC_HA_MODE: 'master' });
      proxy = await startFaultProxy(master.url);
      [redirect, proxied, rejecting] = await Promise.all([
        // Reaches the master through the proxy: redirects must still name the master's own URL.
        startNode('r-redirect', dir.root, { ...common, NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: proxy.url, NEBULAGC_HEARTBEAT_FLUSH_MS: '100' }),
        startNode('r-proxy', dir.root, { ...common, NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, NEBULAGC_REPLICA_WRITES: 'proxy' }),
        startNode('r-reject', dir.root, { ...common, NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, NEBULAGC_REPLICA_WRITES: 'reject' }),
      ]);
      const tenant = await createTenant(master.url, 'writes');
      const c = await call(master.url, 'POST', '/api/v1/clusters', { headers: OP, json: { tenant_id: tenant, name: 'writes' } });
      assert.equal(c.status, 201, JSON.stringify(c.body));
      clusterToken = c.body.token;
      const mk = async (name: string): Promise<{ id: string; token: string }> => {
        const n = await call(master.url, 'POST', '/api/v1/nodes', { headers: OP, json: { cluster_id: c.body.cluster.id, name } });
        assert.equal(n.status, 201, JSON.stringify(n.body));
        return { id: n.body.node.id, token: n.body.token };
      };
      nodeA = await mk('node-a');
      nodeB = await mk('node-b');
      await Promise.all([redirect, proxied, rejecting].map((r) => waitCaughtUp(master, r)));
      assert.ok(await waitUntil(async () => (await health(redirect.url)).master_url === master.url, 5000), 'the replica learnt the master’s advertised URL');
    });
    after(async () => {
      for (const n of [redirect, proxied, rejecting, master]) await n?.kill9();
      await proxy?.close();
      dir?.remove();
    });

    const lastSeenOnMaster = (id: string): string | null => {
      const db = new Database(master.dbPath, { readonly: true, fileMustExist: true });
      try {
        return (db.prepare('SELECT last_seen_at FROM nodes WHERE id = ?').get(id) as { last_seen_at: string | null }).last_seen_at;
      } finally {
        db.close();
      }
    };

    it('every write route on a replica answers 307 to the master’s advertised URL, same path and query', async () => {
      const spec = (await (await fetch(`${master.url}/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
      const routes: { method: string; path: string }[] = [];
      for (const [p, ops] of Object.entries(spec.paths)) {
        // /cluster/* operations (promote, demote, ...) act on the node itself, whatever its role.
        for (const method of ['post', 'put', 'patch', 'delete']) if (ops[method] && p !== '/api/v1/heartbeat' && !p.startsWith('/cluster/')) routes.push({ method: method.toUpperCase(), path: p });
      }
      const names = routes.map((r) => `${r.method} ${r.path}`);
      for (const must of ['POST /api/v1/tenants', 'DELETE /api/v1/tenants/{id}', 'PATCH /api/v1/nodes/{id}', 'PUT /api/v1/routes', 'POST /api/v1/config/bundle', 'POST /api/v1/operator/rotate-token']) {
        assert.ok(names.includes(must), `${must} is in /openapi.json (have: ${names.join(', ')})`);
      }
      assert.ok(routes.length >= 15, `${routes.length} write routes`);

      for (const [i, r] of routes.entries()) {
        const concrete = r.path.replace(/\{[^}]+\}/g, `probe${i}`);
        const query = `?cluster_id=c%2F${i}&x=a+b&empty=`;
        const res = await call(redirect.url, r.method, concrete + query, { headers: OP, json: { probe: i } });
        const what = `${r.method} ${concrete}${query} on a replica`;
        assert.equal(res.status, 307, `${what}: ${JSON.stringify(res.body)}`);
        assert.equal(res.headers.get('location'), `${master.url}${concrete}${query}`, what);
        assert.equal(res.headers.get('x-nebulagc-master-url'), master.url, what);
        assert.equal(res.body.code, 'NOT_MASTER', what);
        assert.equal(res.body.master_url, master.url, what);
        assert.equal(typeof res.body.error, 'string', what);
      }

      // A client that follows the redirect (same method and body) gets its write done.
      const first = await call(redirect.url, 'POST', '/api/v1/tenants', { headers: OP, json: { name: 'followed' } });
      assert.equal(first.status, 307);
      const followed = await call(first.headers.get('location')!, 'POST', '', { headers: OP, json: { name: 'followed' } });
      assert.equal(followed.status, 201, JSON.stringify(followed.body));
      assert.ok(await waitUntil(async () => (await tenantNames(redirect.url)).names?.includes('followed') ?? false, 5000));
    });

    it('a heartbeat sent to a replica is answered there (202) and reaches the master’s database', async () => {
      assert.equal(lastSeenOnMaster(nodeA.id), null);
      const r = await call(redirect.url, 'POST', '/api/v1/heartbeat', { headers: { 'x-nebulagc-node-token': nodeA.token } });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.accepted, true);
      assert.equal(typeof r.body.last_seen_at, 'string');
      const bearer = await call(proxied.url, 'POST', '/api/v1/heartbeat', { headers: { authorization: `Bearer ${nodeA.token}` } });
      assert.equal(bearer.status, 202, 'also with the token as Bearer, on a proxy-mode replica');
      assert.equal(bearer.headers.get('x-nebulagc-proxied-by'), null, 'heartbeats are handled locally, not proxied');
      assert.ok(
        await waitUntil(() => (lastSeenOnMaster(nodeA.id) ?? '') >= r.body.last_seen_at, 5000),
        `last_seen_at on the master: ${lastSeenOnMaster(nodeA.id)}\n${tail(redirect)}`,
      );
      const onMaster = await call(master.url, 'GET', `/api/v1/nodes/${nodeA.id}`, { headers: OP });
      assert.ok(onMaster.body.last_seen_at >= r.body.last_seen_at);
      assert.equal(lastSeenOnMaster(nodeB.id), null, 'only the node that beat');
    });

    it('NEBULAGC_REPLICA_WRITES=proxy: the replica forwards the write to the master and then serves it', async () => {
      const r = await call(proxied.url, 'POST', '/api/v1/tenants', { headers: OP, json: { name: 'via-proxy' } });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      assert.equal(r.body.name, 'via-proxy');
      assert.equal(r.headers.get('x-nebulagc-proxied-by'), 'replica');
      const txid = r.headers.get('x-nebulagc-txid');
      assert.match(txid ?? '', /^\d+$/, 'the master’s X-NebulaGC-TxID comes through');
      const onMaster = await call(master.url, 'GET', `/api/v1/tenants/${r.body.id}`, { headers: OP });
      assert.equal(onMaster.status, 200);
      assert.equal(onMaster.body.name, 'via-proxy');
      // Read-your-writes on the same replica.
      const read = await call(proxied.url, 'GET', `/api/v1/tenants/${r.body.id}`, { headers: { ...OP, 'x-nebulagc-min-txid': txid! } });
      assert.equal(read.status, 200, JSON.stringify(read.body));
      assert.equal(read.body.name, 'via-proxy');
      assert.ok(await waitUntil(async () => (await tenantNames(proxied.url)).names?.includes('via-proxy') ?? false, 5000));
      // The master's refusals come back as they are.
      const dup = await call(proxied.url, 'POST', '/api/v1/tenants', { headers: OP, json: { name: 'via-proxy' } });
      assert.equal(dup.status, 409);
      assert.equal(dup.body.code, 'CONFLICT');
    });

    it('NEBULAGC_REPLICA_WRITES=reject: 503 NOT_MASTER naming the master, and nothing is written', async () => {
      const r = await call(rejecting.url, 'POST', '/api/v1/tenants', { headers: OP, json: { name: 'rejected' } });
      assert.equal(r.status, 503, JSON.stringify(r.body));
      assert.equal(r.body.code, 'NOT_MASTER');
      assert.equal(r.body.master_url, master.url);
      assert.equal(r.headers.get('x-nebulagc-master-url'), master.url);
      assert.equal(r.headers.get('location'), null);
      const del = await call(rejecting.url, 'DELETE', `/api/v1/nodes/${nodeB.id}`, { headers: OP });
      assert.equal(del.status, 503);
      assert.ok(!(await tenantNames(master.url)).names!.includes('rejected'));
      assert.equal((await call(master.url, 'GET', `/api/v1/nodes/${nodeB.id}`, { headers: OP })).status, 200);
    });

    it('the internal endpoints take only the replication secret', async () => {
      const pos = (await health(master.url)).position!;
      const q = (over: Record<string, string | number> = {}): string =>
        new URLSearchParams({ from: String(pos.txid), epoch: String(pos.epoch), checksum: pos.checksum, replica_id: 'intruder', format: String(RECORD_FORMAT), secret_fp: secretFingerprint(TEST_SECRET), ...over } as Record<string, string>).toString();
      const endpoints: { method: string; path: string; json?: unknown }[] = [
        { method: 'GET', path: `/internal/v1/replication/stream?${q()}` },
        { method: 'GET', path: `/internal/v1/replication/snapshot?replica_id=intruder&secret_fp=${secretFingerprint(TEST_SECRET)}` },
        { method: 'POST', path: '/internal/v1/replication/ack', json: { replica_id: 'intruder', ...pos } },
        { method: 'POST', path: '/internal/v1/heartbeats', json: { beats: [[nodeB.id, new Date().toISOString()]] } },
      ];
      const wrong = REPLICATION_SECRET.slice(0, -1) + (REPLICATION_SECRET.endsWith('f') ? 'e' : 'f');
      const creds: { name: string; headers: Record<string, string>; code: string }[] = [
        { name: 'no credentials', headers: {}, code: 'AUTH_MISSING' },
        { name: 'a wrong secret', headers: { authorization: `Bearer ${wrong}` }, code: 'AUTH_INVALID' },
        { name: 'the secret plus a character', headers: { authorization: `Bearer ${REPLICATION_SECRET}x` }, code: 'AUTH_INVALID' },
        { name: 'the operator token', headers: OP, code: 'AUTH_INVALID' },
        { name: 'a node token as Bearer', headers: { authorization: `Bearer ${nodeB.token}` }, code: 'AUTH_INVALID' },
        { name: 'a node token header', headers: { 'x-nebulagc-node-token': nodeB.token }, code: 'AUTH_MISSING' },
        { name: 'a cluster token header', headers: { 'x-nebulagc-cluster-token': clusterToken }, code: 'AUTH_MISSING' },
        { name: 'the secret in a node-token header', headers: { 'x-nebulagc-node-token': REPLICATION_SECRET }, code: 'AUTH_MISSING' },
        { name: 'the secret as Basic auth', headers: { authorization: `Basic ${Buffer.from(`x:${REPLICATION_SECRET}`).toString('base64')}` }, code: 'AUTH_MISSING' },
      ];
      for (const e of endpoints) {
        for (const c of creds) {
          const r = await probe(master.url, e.method, e.path, c.headers, e.json);
          assert.equal(r.status, 401, `${e.method} ${e.path.split('?')[0]} with ${c.name}: ${r.status} ${JSON.stringify(r.body)}`);
          assert.equal(r.body?.code, c.code, `${e.method} ${e.path.split('?')[0]} with ${c.name}`);
        }
      }
      // None of it had an effect.
      const replicas = await call(master.url, 'GET', '/cluster/replicas', { headers: OP });
      assert.equal(replicas.status, 200);
      assert.ok(!(replicas.body.replicas as { id: string }[]).some((r) => r.id === 'intruder'), 'no stream was opened, no ack taken');
      assert.equal(lastSeenOnMaster(nodeB.id), null, 'no heartbeat was written');

      // With the secret: a position off the master's history is told to take a snapshot.
      const secret = { authorization: `Bearer ${REPLICATION_SECRET}` };
      const bogus = pos.checksum.slice(0, -1) + (pos.checksum.endsWith('0') ? '1' : '0');
      for (const [what, over] of [
        ['a wrong checksum', { checksum: bogus }],
        ['a txid beyond the master', { from: pos.txid + 1000 }],
        ['an old txid with a wrong checksum', { from: 1, checksum: 'ffffffffffffffff' }],
      ] as const) {
        const r = await probe(master.url, 'GET', `/internal/v1/replication/stream?${q(over)}`, secret);
        assert.equal(r.status, 409, `${what}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, 'SNAPSHOT_REQUIRED', what);
      }
      // A replica of another record format (an older NebulaGC sends none) is refused with the
      // reason, and not with 409, which would send it to take a snapshot it could not use either.
      for (const format of [undefined, RECORD_FORMAT - 1, RECORD_FORMAT + 1]) {
        const params = new URLSearchParams(q({ replica_id: 'other-version' }));
        if (format === undefined) params.delete('format');
        else params.set('format', String(format));
        const r = await probe(master.url, 'GET', `/internal/v1/replication/stream?${params}`, secret);
        assert.equal(r.status, 400, `format ${format}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, 'RECORD_FORMAT_MISMATCH');
        assert.match(r.body.error, /run the same version on master and replicas/);
        assert.equal(r.body.details.format, RECORD_FORMAT);
      }
      // ... and the right secret does open each endpoint (so the refusals above were about the credentials).
      const ok = await probe(master.url, 'GET', `/internal/v1/replication/stream?${q({ replica_id: 'probe' })}`, secret);
      assert.equal(ok.status, 200);
      assert.equal(ok.headers.get('content-type'), 'application/vnd.nebulagc.replication-stream');
      assert.equal(ok.headers.get('x-nebulagc-record-format'), String(RECORD_FORMAT));
      const snap = await probe(master.url, 'GET', `/internal/v1/replication/snapshot?replica_id=probe&secret_fp=${secretFingerprint(TEST_SECRET)}`, secret);
      assert.equal(snap.status, 200);
      assert.ok(Number(snap.headers.get('content-length')) > SNAPSHOT_HEADER_BYTES);
      const ack = await probe(master.url, 'POST', '/internal/v1/replication/ack', secret, { replica_id: 'probe', ...pos });
      assert.equal(ack.status, 200, JSON.stringify(ack.body));
      const beats = await probe(master.url, 'POST', '/internal/v1/heartbeats', secret, { beats: [] });
      assert.equal(beats.status, 200, JSON.stringify(beats.body));
      assert.equal(beats.body.updated, 0);

      // Last, as it ends this master's term: a peer at a newer epoch means another node was
      // promoted. Not 409 (a snapshot from a stale master would not help): it fences itself.
      const newer = await probe(master.url, 'GET', `/internal/v1/replication/stream?${q({ replica_id: 'probe', epoch: pos.epoch + 1 })}`, secret);
      assert.equal(newer.status, 503, JSON.stringify(newer.body));
      assert.equal(newer.body.code, 'NOT_MASTER');
      assert.equal((await call(master.url, 'GET', '/health/master')).status, 503, 'the master fenced itself');
    });
  });
});
