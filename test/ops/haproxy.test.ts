import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { masterOf, masterWatch, startAutoCluster, type AutoCluster } from '../helpers/auto-cluster.js';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd, type EtcdServer } from '../helpers/etcd.js';
import { FrontedClient, longestWriteGap, succeeded, type Outcome } from '../helpers/fronted-client.js';
import { HAPROXY_CFG, startHaproxy, type Haproxy } from '../helpers/haproxy.js';
import { tenantNames } from '../helpers/probes.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';
import { TcpGate } from '../helpers/tcp-gate.js';

/** What every node behind a load balancer runs with (haproxy/README.md). */
export const FRONTED_ENV = { NEBULAGC_REPLICA_WRITES: 'proxy', NEBULAGC_TRUST_PROXY: 'true' };
const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

const errorsOf = (outcomes: Outcome[]): Outcome[] => outcomes.filter((o) => !succeeded(o));
const describeErrors = (errors: Outcome[]): string => JSON.stringify(errors.slice(0, 10).map((e) => ({ kind: e.kind, status: e.status, code: e.code })));

/** The server name the shipped config gives a node, by its place in the member list. */
const serverName = (members: ServerProcess[], n: ServerProcess): string => `n${members.indexOf(n) + 1}`;

async function sessionsByServer(hap: Haproxy, backend: string): Promise<Map<string, number>> {
  return new Map((await hap.stats()).filter((r) => r.backend === backend && r.server !== 'BACKEND').map((r) => [r.server, r.sessions]));
}

describe('haproxy/haproxy.cfg', () => {
  it('passes haproxy -c', () => {
    const out = execFileSync('haproxy', ['-c', '-f', HAPROXY_CFG], { encoding: 'utf8' });
    assert.match(out, /valid/i);
  });
});

describe('HAProxy in front of a three-node auto cluster (real haproxy, real etcd)', () => {
  let etcd: EtcdServer;
  let cluster: AutoCluster;
  let hap: Haproxy;
  let nodes: ServerProcess[];

  const writeMasterIs = async (n: ServerProcess): Promise<boolean> => {
    const up = (await hap.up('nebulagc_write')).filter((s) => !s.endsWith('-hold'));
    return up.length === 1 && up[0] === serverName(cluster.members, n);
  };

  before(async () => {
    etcd = await startEtcd();
    // Semi-synchronous, so that an acknowledged write survives the crash (docs/HA.md).
    cluster = await startAutoCluster('haproxy', { kind: 'etcd', endpoints: etcd.endpoint }, { env: { ...FRONTED_ENV, NEBULAGC_SYNC_REPLICAS: '1' } });
    nodes = [...cluster.members];
    hap = await startHaproxy(cluster.members.map((m) => m.url));
    const master = (await masterOf(nodes))!;
    assert.ok(await waitUntil(() => writeMasterIs(master), 15_000), `the write backend has only the master up:\n${hap.output()}`);
  });
  after(async () => {
    await hap?.stop();
    await cluster?.remove();
    await etcd?.stop();
  });

  it('sends writes to the master alone and spreads reads over every node', async () => {
    const master = (await masterOf(nodes))!;
    const writesBefore = await sessionsByServer(hap, 'nebulagc_write');
    const readsBefore = await sessionsByServer(hap, 'nebulagc_read');
    for (let i = 0; i < 20; i++) {
      const w = await call(hap.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: `hap-route-${i}` } });
      assert.equal(w.status, 201, JSON.stringify(w.body));
      assert.equal(w.headers.get('x-nebulagc-proxied-by'), null, 'the write reached the master, not a replica that forwarded it');
    }
    for (let i = 0; i < 60; i++) assert.equal((await call(hap.url, 'GET', '/api/v1/tenants', { headers: op })).status, 200);
    const writes = await sessionsByServer(hap, 'nebulagc_write');
    const reads = await sessionsByServer(hap, 'nebulagc_read');
    const delta = (after: Map<string, number>, before: Map<string, number>, server: string): number => (after.get(server) ?? 0) - (before.get(server) ?? 0);
    const m = serverName(nodes, master);
    assert.equal(delta(writes, writesBefore, m), 20, 'all 20 writes went to the master');
    for (const n of nodes) {
      const s = serverName(nodes, n);
      if (n !== master) assert.equal(delta(writes, writesBefore, s) + delta(writes, writesBefore, `${s}-hold`), 0, `no write went to ${s}`);
      const served = delta(reads, readsBefore, s) + delta(reads, readsBefore, `${s}-master`);
      assert.ok(served > 0, `node ${s} served reads (${served})`);
    }
    assert.equal((await call(hap.url, 'GET', '/internal/v1/replication/status')).status, 404, 'the internal endpoints are not exposed');
    const head = await fetch(`${hap.url}/health/live`, { method: 'HEAD' });
    assert.equal(head.status, 200);
  });

  it('a switchover shows clients no error at all', async () => {
    const old = (await masterOf(nodes))!;
    const client = new FrontedClient(hap.url, 'hap-switch', { writers: 2, readers: 2 });
    client.start();
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = performance.now();
    const res = await call(old.url, 'POST', '/cluster/switchover', { headers: op, json: {} });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const target = nodes.find((n) => n.name === res.body.to?.node_id || n.name === res.body.node_id);
    const next = target ?? (await masterOf(nodes))!;
    assert.ok(await waitUntil(() => writeMasterIs(next), 15_000), 'HAProxy moved writes to the new master');
    await new Promise((r) => setTimeout(r, 1500));
    const outcomes = await client.stop();
    const errors = errorsOf(outcomes);
    assert.deepEqual(errors, [], `no client error during the switchover: ${describeErrors(errors)}`);
    const acked = outcomes.filter((o) => o.kind === 'write' && succeeded(o)).map((o) => o.name!);
    const after = outcomes.filter((o) => o.kind === 'write' && o.start > t0 && succeeded(o)).length;
    assert.ok(after > 0, 'writes went on after the switchover');
    const names = tenantNames(next);
    assert.deepEqual(acked.filter((n) => !names.has(n)), [], 'every acknowledged write is on the new master');
    console.log(`# haproxy switchover: ${outcomes.length} requests, 0 errors, longest write gap ${longestWriteGap(outcomes, t0).toFixed(0)} ms`);
  });

  it('a master killed with kill -9: writes succeed again within the failover time plus the check interval, none acknowledged is lost', async () => {
    const old = (await masterOf(nodes))!;
    const watch = masterWatch(() => nodes.filter((n) => n !== old));
    const client = new FrontedClient(hap.url, 'hap-crash', { writers: 2, readers: 2 });
    client.start();
    await new Promise((r) => setTimeout(r, 1000));
    const killedAt = performance.now();
    await old.kill9();
    const diedAt = performance.now();
    let elected = 0;
    assert.ok(
      await waitUntil(async () => {
        const m = await masterOf(nodes.filter((n) => n !== old));
        if (m && !elected) elected = performance.now();
        return m !== undefined;
      }, 20_000),
      'a replica took over',
    );
    const next = (await masterOf(nodes.filter((n) => n !== old)))!;
    assert.ok(await waitUntil(() => writeMasterIs(next), 15_000), 'HAProxy moved writes to the new master');
    await new Promise((r) => setTimeout(r, 1500));
    const outcomes = await client.stop();
    const seen = await watch.stop();
    assert.equal(seen.most, 1, 'never two masters');
    const firstWriteAfter = outcomes.filter((o) => o.kind === 'write' && succeeded(o) && o.start > killedAt).sort((a, b) => a.end - b.end)[0];
    assert.ok(firstWriteAfter, 'writes through HAProxy succeed again');
    // Only a request in flight to the master as it died (between the signal and its exit) can
    // fail: it may have run, so nothing retries it.
    const errors = errorsOf(outcomes);
    const unexplained = errors.filter((e) => !(e.start <= diedAt && e.end >= killedAt));
    assert.deepEqual(unexplained, [], `errors other than requests in flight at the kill: ${describeErrors(unexplained)}`);
    const names = tenantNames(next);
    const acked = outcomes.filter((o) => o.kind === 'write' && succeeded(o)).map((o) => o.name!);
    assert.deepEqual(acked.filter((n) => !names.has(n)), [], 'no acknowledged write lost');
    const failoverMs = elected - killedAt;
    const recoveredMs = firstWriteAfter.end - killedAt;
    // The bound the issue sets: the failover plus one check interval (1 s), plus 1 s for the
    // held write to be forwarded and answered on a busy 2-core machine.
    assert.ok(recoveredMs <= failoverMs + 2000, `writes recovered ${recoveredMs.toFixed(0)} ms after the kill; failover took ${failoverMs.toFixed(0)} ms`);
    console.log(
      `# haproxy crash: failover ${failoverMs.toFixed(0)} ms, first write acknowledged ${recoveredMs.toFixed(0)} ms after the kill, longest write gap ${longestWriteGap(outcomes, killedAt - 1000).toFixed(0)} ms, ${errors.length} in-flight errors`,
    );
  });
});

describe('HAProxy: a replica whose stream stalls past the lag threshold leaves the read backend', () => {
  let master: ServerProcess;
  let stalled: ServerProcess;
  let other: ServerProcess;
  let gate: TcpGate;
  let hap: Haproxy;
  const dir = clusterDir('haproxy-lag');

  before(async () => {
    master = await startNode('m', dir.root, { NEBULAGC_HA_MODE: 'master', ...FRONTED_ENV });
    gate = await TcpGate.open(master.port);
    stalled = await startNode('r1', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: gate.url, ...FRONTED_ENV });
    other = await startNode('r2', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, ...FRONTED_ENV });
    hap = await startHaproxy([master.url, stalled.url, other.url]);
    assert.ok(await waitUntil(async () => (await hap.up('nebulagc_read')).length === 3, 15_000), 'two replicas and the master serve reads');
  });
  after(async () => {
    await hap?.stop();
    for (const n of [master, stalled, other]) await n?.kill9();
    await gate?.close();
    dir.remove();
  });

  it('goes out while its lag is over max_lag_ms, and comes back once caught up', async () => {
    assert.deepEqual((await hap.up('nebulagc_read')).sort(), ['n1-master', 'n2', 'n3']);
    gate.blackhole();
    for (let i = 0; i < 5; i++) assert.equal((await call(hap.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: `lag-${i}` } })).status, 201);
    assert.ok(await waitUntil(async () => !(await hap.up('nebulagc_read')).includes('n2'), 20_000), 'the stalled replica left the read backend');
    assert.ok((await hap.up('nebulagc_read')).includes('n3'), 'the healthy replica stayed');
    for (let i = 0; i < 40; i++) {
      const r = await call(hap.url, 'GET', '/api/v1/tenants', { headers: op });
      assert.equal(r.status, 200);
      assert.ok((r.body.tenants as { name: string }[]).some((t) => t.name === 'lag-4'), 'no read came from the stalled replica');
    }
    gate.heal();
    assert.ok(await waitUntil(async () => (await hap.up('nebulagc_read')).includes('n2'), 20_000), 'back in the read backend once caught up');
  });
});
