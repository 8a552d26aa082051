import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { seed, type Seeded } from '../helpers/fixtures.js';
import { validBundle } from '../helpers/bundle.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

/** Tokens of one tenant or cluster try to reach another's data; every attempt must fail. */
describe('scope enforcement across tenants and clusters', () => {
  let s: TestServer;
  let a: Seeded;
  let b: Seeded;
  before(async () => {
    s = await startTestServer();
    a = await seed(s, 'a');
    b = await seed(s, 'b');
    const up = await call(s.url, 'POST', `/api/v1/config/bundle?cluster_id=${b.clusterId}`, { headers: s.op, raw: await validBundle() });
    assert.equal(up.status, 201);
  });
  after(() => s.stop());

  it('node and cluster tokens cannot use operator routes', async () => {
    for (const headers of [a.admin.headers, a.node.headers, { 'x-nebulagc-cluster-token': a.clusterToken }]) {
      for (const [method, url] of [
        ['GET', '/api/v1/tenants'],
        ['GET', '/api/v1/clusters'],
        ['GET', `/api/v1/clusters/${a.clusterId}`],
        ['POST', `/api/v1/clusters/${b.clusterId}/rotate-token`],
        ['POST', '/api/v1/operator/rotate-token'],
      ] as const) {
        const r = await call(s.url, method, url, { headers });
        assert.equal(r.status, 403, `${method} ${url}`);
      }
    }
  });

  it("an admin node of cluster A cannot read, change or delete cluster B's nodes", async () => {
    const h = a.admin.headers;
    assert.equal((await call(s.url, 'GET', `/api/v1/nodes/${b.node.id}`, { headers: h })).status, 404);
    assert.equal((await call(s.url, 'PATCH', `/api/v1/nodes/${b.node.id}`, { headers: h, json: { mtu: 1500 } })).status, 404);
    assert.equal((await call(s.url, 'DELETE', `/api/v1/nodes/${b.node.id}`, { headers: h })).status, 404);
    assert.equal((await call(s.url, 'POST', `/api/v1/nodes/${b.node.id}/rotate-token`, { headers: h })).status, 404);
    const list = await call(s.url, 'GET', `/api/v1/nodes?cluster_id=${b.clusterId}`, { headers: h });
    assert.equal(list.status, 403);
    const create = await call(s.url, 'POST', '/api/v1/nodes', { headers: h, json: { cluster_id: b.clusterId, name: 'intruder' } });
    assert.equal(create.status, 403);
    const still = await call(s.url, 'GET', `/api/v1/nodes/${b.node.id}`, { headers: s.op });
    assert.equal(still.body.mtu, 1300);
  });

  it("cluster A's tokens cannot see cluster B's config, bundles, topology or routes", async () => {
    for (const headers of [a.admin.headers, a.node.headers, { 'x-nebulagc-cluster-token': a.clusterToken }]) {
      for (const url of [
        `/api/v1/config/version?cluster_id=${b.clusterId}`,
        `/api/v1/config/bundle?cluster_id=${b.clusterId}`,
        `/api/v1/topology?cluster_id=${b.clusterId}`,
        `/api/v1/routes/cluster?cluster_id=${b.clusterId}`,
      ]) {
        const r = await call(s.url, 'GET', url, { headers });
        assert.equal(r.status, 403, url);
      }
    }
    const list = await call(s.url, 'GET', `/api/v1/config/bundles?cluster_id=${b.clusterId}`, { headers: a.admin.headers });
    assert.equal(list.status, 403);
    const up = await call(s.url, 'POST', `/api/v1/config/bundle?cluster_id=${b.clusterId}`, { headers: a.admin.headers, raw: await validBundle() });
    assert.equal(up.status, 403);
    const own = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: { 'x-nebulagc-cluster-token': a.clusterToken } });
    assert.equal(own.status, 404, 'cluster A has no bundle; B’s must not leak');
  });

  it("topology changes cannot target another cluster's node", async () => {
    const lh = await call(s.url, 'POST', '/api/v1/topology/lighthouses', {
      headers: a.admin.headers,
      json: { node_id: b.node.id, public_ip: '198.51.100.1' },
    });
    assert.equal(lh.status, 404);
    const relay = await call(s.url, 'POST', '/api/v1/topology/relays', { headers: a.admin.headers, json: { node_id: b.node.id } });
    assert.equal(relay.status, 404);
    const topo = await call(s.url, 'GET', `/api/v1/topology?cluster_id=${b.clusterId}`, { headers: s.op });
    assert.deepEqual(topo.body.lighthouses, []);
    assert.deepEqual(topo.body.relays, []);
  });

  it('a token in the wrong header does not authenticate', async () => {
    const asCluster = await call(s.url, 'GET', '/api/v1/config/version', { headers: { 'x-nebulagc-cluster-token': a.node.token } });
    assert.equal(asCluster.status, 401);
    const asNode = await call(s.url, 'GET', '/api/v1/config/version', { headers: { 'x-nebulagc-node-token': a.clusterToken } });
    assert.equal(asNode.status, 401);
    const opAsNode = await call(s.url, 'GET', '/api/v1/tenants', { headers: { 'x-nebulagc-node-token': s.op.authorization!.slice(7) } });
    assert.equal(opAsNode.status, 401);
  });
});
