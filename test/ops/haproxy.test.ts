import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { masterOf, startAutoCluster, type AutoCluster } from '../helpers/auto-cluster.js';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd, type EtcdServer } from '../helpers/etcd.js';
import { crashThrough, describeErrors, FRONTED_ENV, OPERATOR, switchoverThrough } from '../helpers/fronting.js';
import { HAPROXY_CFG, haproxyWritesTo, serverName, startHaproxy, type Haproxy } from '../helpers/haproxy.js';
import { call } from '../helpers/server.js';
import { TcpGate } from '../helpers/tcp-gate.js';


async function sessionsByServer(hap: Haproxy, backend: string): Promise<Map<string, number>> {
  return new Map((await hap.stats()).filter((r) => r.backend === backend && r.server !== 'BACKEND').map((r) => [r.server, r.sessions]));
}


describe('haproxy/haproxy.cfg', () => {
  it('passes haproxy -c', () => {
    assert.match(execFileSync('haproxy', ['-c', '-f', HAPROXY_CFG], { encoding: 'utf8' }), /valid/i);
  });
});

describe('HAProxy in front of a three-node auto cluster (real haproxy, real etcd)', () => {
  let etcd: EtcdServer;
  let cluster: AutoCluster;
  let hap: Haproxy;
  let nodes: ServerProcess[];
  const movedTo = (m: ServerProcess): Promise<boolean> => haproxyWritesTo(hap, nodes, m);

  before(async () => {
    etcd = await startEtcd();
    cluster = await startAutoCluster('haproxy', { kind: 'etcd', endpoints: etcd.endpoint }, { env: FRONTED_ENV });
    nodes = [...cluster.members];
    hap = await startHaproxy(cluster.members.map((m) => m.url));
    const master = (await masterOf(nodes))!;
    assert.ok(await waitUntil(() => movedTo(master), 15_000), `the write backend has only the master up:\n${hap.output()}`);
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
      const w = await call(hap.url, 'POST', '/api/v1/tenants', { headers: OPERATOR, json: { name: `hap-route-${i}` } });
      assert.equal(w.status, 201, JSON.stringify(w.body));
      assert.equal(w.headers.get('x-nebulagc-proxied-by'), null, 'the write reached the master, not a replica that forwarded it');
    }
    for (let i = 0; i < 60; i++) assert.equal((await call(hap.url, 'GET', '/api/v1/tenants', { headers: OPERATOR })).status, 200);
    const writes = await sessionsByServer(hap, 'nebulagc_write');
    const reads = await sessionsByServer(hap, 'nebulagc_read');
    const delta = (now: Map<string, number>, before: Map<string, number>, server: string): number => (now.get(server) ?? 0) - (before.get(server) ?? 0);
    assert.equal(delta(writes, writesBefore, serverName(nodes, master)), 20, 'all 20 writes went to the master');
    for (const n of nodes) {
      const s = serverName(nodes, n);
      if (n !== master) assert.equal(delta(writes, writesBefore, s) + delta(writes, writesBefore, `${s}-hold`), 0, `no write went to ${s}`);
      const served = delta(reads, readsBefore, s) + delta(reads, readsBefore, `${s}-master`);
      assert.ok(served > 0, `node ${s} served reads (${served})`);
    }
    assert.equal((await call(hap.url, 'GET', '/internal/v1/replication/status')).status, 404, 'the internal endpoints are not exposed');
    assert.equal((await call(hap.url, 'GET', '/metrics')).status, 404, 'nor the metrics');
    assert.equal((await fetch(`${hap.url}/health/live`, { method: 'HEAD' })).status, 200);
  });

  it('a switchover shows clients no error at all', async () => {
    const drill = await switchoverThrough(hap.url, nodes, 'hap-switch', movedTo);
    assert.deepEqual(drill.errors, [], `no client error during the switchover: ${describeErrors(drill.errors)}`);
    console.log(`# haproxy switchover: ${drill.outcomes.length} requests, 0 errors, longest write gap ${drill.writeGapMs.toFixed(0)} ms`);
  });

  it('a master killed with kill -9: writes succeed again within the failover time plus the check interval, none acknowledged is lost', async () => {
    const drill = await crashThrough(hap.url, cluster, nodes, 'hap-crash', movedTo);
    // The bound the issue sets: the failover plus one check interval (1 s), plus 1 s for the held
    // write to be forwarded and answered on a busy 2-core machine.
    assert.ok(drill.recoveredMs <= drill.failoverMs + 2000, `writes recovered ${drill.recoveredMs.toFixed(0)} ms after the kill; failover took ${drill.failoverMs.toFixed(0)} ms`);
    console.log(
      `# haproxy crash: failover ${drill.failoverMs.toFixed(0)} ms, first write acknowledged ${drill.recoveredMs.toFixed(0)} ms after the kill, longest write gap ${drill.writeGapMs.toFixed(0)} ms, ${drill.errors.length} in-flight errors`,
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
    master = await startNode('m', dir.root, { NEBULAGC_HA_MODE: 'master', ...FRONTED_ENV, NEBULAGC_SYNC_REPLICAS: '0' });
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
    for (let i = 0; i < 5; i++) assert.equal((await call(hap.url, 'POST', '/api/v1/tenants', { headers: OPERATOR, json: { name: `lag-${i}` } })).status, 201);
    assert.ok(await waitUntil(async () => !(await hap.up('nebulagc_read')).includes('n2'), 20_000), 'the stalled replica left the read backend');
    assert.ok((await hap.up('nebulagc_read')).includes('n3'), 'the healthy replica stayed');
    for (let i = 0; i < 40; i++) {
      const r = await call(hap.url, 'GET', '/api/v1/tenants', { headers: OPERATOR });
      assert.equal(r.status, 200);
      assert.ok((r.body.tenants as { name: string }[]).some((t) => t.name === 'lag-4'), 'no read came from the stalled replica');
    }
    gate.heal();
    assert.ok(await waitUntil(async () => (await hap.up('nebulagc_read')).includes('n2'), 20_000), 'back in the read backend once caught up');
  });
});
