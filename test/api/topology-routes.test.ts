import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { configVersion, seed, type Seeded } from '../helpers/fixtures.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

describe('topology and routes', () => {
  let s: TestServer;
  let k: Seeded;
  before(async () => {
    s = await startTestServer();
    k = await seed(s);
  });
  after(() => s.stop());

  const version = (): Promise<number> => configVersion(s, k);

  it('assigns and unassigns a lighthouse, bumping the version each time', async () => {
    const v0 = await version();
    const a = await call(s.url, 'POST', '/api/v1/topology/lighthouses', {
      headers: k.admin.headers,
      json: { node_id: k.admin.id, public_ip: '198.51.100.10', port: 4300 },
    });
    assert.equal(a.status, 200, JSON.stringify(a.body));
    assert.deepEqual(a.body.lighthouses, [
      { node_id: k.admin.id, name: 'admin', overlay_ip: '10.42.0.1', public_ip: '198.51.100.10', port: 4300 },
    ]);
    assert.equal(a.body.config_version, v0 + 1);
    const seenByNode = await call(s.url, 'GET', '/api/v1/topology', { headers: k.node.headers });
    assert.deepEqual(seenByNode.body, a.body);
    const filtered = await call(s.url, 'GET', '/api/v1/nodes?is_lighthouse=true', { headers: k.admin.headers });
    assert.deepEqual(
      filtered.body.nodes.map((n: { id: string }) => n.id),
      [k.admin.id],
    );
    const u = await call(s.url, 'DELETE', `/api/v1/topology/lighthouses/${k.admin.id}`, { headers: k.admin.headers });
    assert.equal(u.status, 200);
    assert.deepEqual(u.body.lighthouses, []);
    assert.equal(await version(), v0 + 2);
  });

  it('a lighthouse without a port uses the cluster’s lighthouse port', async () => {
    const a = await call(s.url, 'POST', '/api/v1/topology/lighthouses', {
      headers: s.op,
      json: { node_id: k.node.id, public_ip: '2001:db8::1' },
    });
    assert.equal(a.status, 200);
    assert.equal(a.body.lighthouses[0].port, 4242);
    await call(s.url, 'DELETE', `/api/v1/topology/lighthouses/${k.node.id}`, { headers: s.op });
  });

  it('assigns and unassigns a relay', async () => {
    const v0 = await version();
    const a = await call(s.url, 'POST', '/api/v1/topology/relays', { headers: k.admin.headers, json: { node_id: k.node.id } });
    assert.equal(a.status, 200);
    assert.deepEqual(a.body.relays, [{ node_id: k.node.id, name: 'host', overlay_ip: '10.42.0.2' }]);
    const u = await call(s.url, 'DELETE', `/api/v1/topology/relays/${k.node.id}`, { headers: k.admin.headers });
    assert.deepEqual(u.body.relays, []);
    assert.equal(await version(), v0 + 2);
  });

  it('refuses topology roles for a node without an overlay IP, and for plain nodes', async () => {
    const bare = await call(s.url, 'POST', '/api/v1/nodes', { headers: k.admin.headers, json: { name: 'no-ip' } });
    const r = await call(s.url, 'POST', '/api/v1/topology/relays', { headers: k.admin.headers, json: { node_id: bare.body.node.id } });
    assert.equal(r.status, 400);
    assert.equal(r.body.code, 'VALIDATION_FAILED');
    const byPlain = await call(s.url, 'POST', '/api/v1/topology/relays', { headers: k.node.headers, json: { node_id: k.node.id } });
    assert.equal(byPlain.status, 403);
    const badIp = await call(s.url, 'POST', '/api/v1/topology/lighthouses', {
      headers: k.admin.headers,
      json: { node_id: k.admin.id, public_ip: 'example.com' },
    });
    assert.equal(badIp.status, 400);
  });

  it('a node reads and replaces its own routes; the cluster view shows them', async () => {
    const v0 = await version();
    const empty = await call(s.url, 'GET', '/api/v1/routes', { headers: k.node.headers });
    assert.equal(empty.status, 200);
    assert.deepEqual(empty.body.routes, []);
    const put = await call(s.url, 'PUT', '/api/v1/routes', {
      headers: k.node.headers,
      json: { routes: ['192.168.50.0/24', '10.200.0.0/16', '192.168.50.0/24'] },
    });
    assert.equal(put.status, 200);
    assert.deepEqual(put.body.routes, ['192.168.50.0/24', '10.200.0.0/16']);
    assert.equal(await version(), v0 + 1);
    const cluster = await call(s.url, 'GET', '/api/v1/routes/cluster', { headers: k.admin.headers });
    assert.deepEqual(cluster.body.routes, [
      { node_id: k.node.id, name: 'host', overlay_ip: '10.42.0.2', routes: ['192.168.50.0/24', '10.200.0.0/16'] },
    ]);
    const bad = await call(s.url, 'PUT', '/api/v1/routes', { headers: k.node.headers, json: { routes: ['10.0.0.0/8', 'nope'] } });
    assert.equal(bad.status, 400);
    const after = await call(s.url, 'GET', '/api/v1/routes', { headers: k.node.headers });
    assert.deepEqual(after.body.routes, ['192.168.50.0/24', '10.200.0.0/16'], 'a rejected update changes nothing');
    const byOperator = await call(s.url, 'PUT', '/api/v1/routes', { headers: s.op, json: { routes: [] } });
    assert.equal(byOperator.status, 403, 'own routes are per node; the operator uses PATCH /nodes/{id}');
  });
});
