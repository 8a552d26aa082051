import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { masterOf, startAutoCluster, type AutoCluster } from '../helpers/auto-cluster.js';
import { clusterDir, startNode, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd, type EtcdServer } from '../helpers/etcd.js';
import { crashThrough, describeErrors, FRONTED_ENV, OPERATOR, switchoverThrough } from '../helpers/fronting.js';
import { checkShippedNginx, startNginx, type Nginx } from '../helpers/nginx.js';
import { call } from '../helpers/server.js';

/** nginx has no view of the master: it is reached as soon as it is elected. */
const always = async (): Promise<boolean> => true;

describe('nginx/nebulagc.conf', () => {
  it('passes nginx -t, included in an http block', () => {
    const t = checkShippedNginx();
    assert.equal(t.status, 0, t.output);
    assert.match(t.output, /test is successful/);
  });
});

describe('NGINX in front of a three-node auto cluster (real nginx, real etcd)', () => {
  let etcd: EtcdServer;
  let cluster: AutoCluster;
  let nginx: Nginx;
  let nodes: ServerProcess[];

  before(async () => {
    etcd = await startEtcd();
    cluster = await startAutoCluster('nginx', { kind: 'etcd', endpoints: etcd.endpoint }, { env: FRONTED_ENV });
    nodes = [...cluster.members];
    nginx = await startNginx(cluster.members.map((m) => m.url));
  });
  after(async () => {
    await nginx?.stop();
    await cluster?.remove();
    await etcd?.stop();
  });

  it('every write lands on the master (forwarded by a replica when nginx picked one), reads succeed, /internal is closed', async () => {
    const master = (await masterOf(nodes))!;
    for (let i = 0; i < 15; i++) {
      const w = await call(nginx.url, 'POST', '/api/v1/tenants', { headers: OPERATOR, json: { name: `nginx-route-${i}` } });
      assert.equal(w.status, 201, JSON.stringify(w.body));
    }
    const names = (await call(master.url, 'GET', '/api/v1/tenants', { headers: OPERATOR })).body.tenants.map((t: { name: string }) => t.name);
    for (let i = 0; i < 15; i++) assert.ok(names.includes(`nginx-route-${i}`));
    for (let i = 0; i < 30; i++) assert.equal((await call(nginx.url, 'GET', '/api/v1/tenants', { headers: OPERATOR })).status, 200);
    assert.equal((await call(nginx.url, 'GET', '/internal/v1/replication/status')).status, 404);
    assert.equal((await call(nginx.url, 'GET', '/metrics')).status, 404);
  });

  it('across a switchover, every write and read succeeds from the client side', async () => {
    const drill = await switchoverThrough(nginx.url, nodes, 'nginx-switch', always);
    assert.deepEqual(drill.errors, [], `no client error: ${describeErrors(drill.errors)}`);
    console.log(`# nginx switchover: ${drill.outcomes.length} requests, 0 errors, longest write gap ${drill.writeGapMs.toFixed(0)} ms`);
  });

  it('across a kill -9 of the master, only requests in flight to it as it died fail, and none acknowledged is lost', async () => {
    const drill = await crashThrough(nginx.url, cluster, nodes, 'nginx-crash', always);
    console.log(
      `# nginx crash: failover ${drill.failoverMs.toFixed(0)} ms, first write acknowledged ${drill.recoveredMs.toFixed(0)} ms after the kill, longest write gap ${drill.writeGapMs.toFixed(0)} ms, ${drill.errors.length} in-flight errors ${describeErrors(drill.errors)}`,
    );
  });
});

describe('NGINX follows a replica’s 307 itself', () => {
  let master: ServerProcess;
  let replica: ServerProcess;
  let nginx: Nginx;
  const dir = clusterDir('nginx-307');

  before(async () => {
    master = await startNode('m', dir.root, { NEBULAGC_HA_MODE: 'master' });
    replica = await startNode('r', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, NEBULAGC_REPLICA_WRITES: 'redirect' });
    // Every node slot is the replica, so every write meets a 307.
    nginx = await startNginx([replica.url, replica.url, replica.url]);
  });
  after(async () => {
    await nginx?.stop();
    for (const n of [master, replica]) await n?.kill9();
    dir.remove();
  });

  it('a write that meets a replica in redirect mode reaches the master, and the client never sees the 307', async () => {
    const direct = await fetch(`${replica.url}/api/v1/tenants`, { method: 'POST', redirect: 'manual', headers: { ...OPERATOR, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'direct' }) });
    assert.equal(direct.status, 307, 'the replica does redirect');
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${nginx.url}/api/v1/tenants`, { method: 'POST', redirect: 'manual', headers: { ...OPERATOR, 'content-type': 'application/json' }, body: JSON.stringify({ name: `followed-${i}` }) });
      assert.equal(res.status, 201, await res.text());
    }
    const names = (await call(master.url, 'GET', '/api/v1/tenants', { headers: OPERATOR })).body.tenants.map((t: { name: string }) => t.name);
    for (let i = 0; i < 5; i++) assert.ok(names.includes(`followed-${i}`), `followed-${i} is on the master`);
  });
});
