import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { configVersion, seed, type Seeded } from '../helpers/fixtures.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

describe('nodes', () => {
  let s: TestServer;
  let k: Seeded;
  before(async () => {
    s = await startTestServer();
    k = await seed(s);
  });
  after(() => s.stop());

  const version = (): Promise<number> => configVersion(s, k);

  it('an admin node creates a node in its own cluster; the token is returned once', async () => {
    const before = await version();
    const r = await call(s.url, 'POST', '/api/v1/nodes', {
      headers: k.admin.headers,
      json: { name: 'web-1', mtu: 1400, routes: ['192.168.10.0/24'], overlay_ip: '10.42.0.10' },
    });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.match(r.body.token, /^ngc_node_[A-Za-z0-9_-]{43}$/);
    assert.equal(r.body.node.cluster_id, k.clusterId);
    assert.equal(r.body.node.mtu, 1400);
    assert.deepEqual(r.body.node.routes, ['192.168.10.0/24']);
    assert.equal(r.body.node.is_admin, false);
    assert.equal(await version(), before + 1);
    const got = await call(s.url, 'GET', `/api/v1/nodes/${r.body.node.id}`, { headers: k.admin.headers });
    assert.equal(got.status, 200);
    assert.equal('token' in got.body, false);
    assert.equal('token_hash' in got.body, false);
  });

  it('validates MTU, routes and IPs', async () => {
    const bad = [
      { name: 'm1', mtu: 1279 },
      { name: 'm2', mtu: 9001 },
      { name: 'r1', routes: ['10.0.0.0/33'] },
      { name: 'r2', routes: ['not-a-cidr'] },
      { name: 'ip', overlay_ip: '10.0.0.256' },
      { name: 'bad name!' },
    ];
    for (const json of bad) {
      const r = await call(s.url, 'POST', '/api/v1/nodes', { headers: k.admin.headers, json });
      assert.equal(r.status, 400, JSON.stringify(json));
      assert.equal(r.body.code, 'VALIDATION_FAILED');
    }
  });

  it('refuses a duplicate name or overlay IP in the cluster', async () => {
    const dupName = await call(s.url, 'POST', '/api/v1/nodes', { headers: k.admin.headers, json: { name: 'host' } });
    assert.equal(dupName.status, 409);
    const dupIp = await call(s.url, 'POST', '/api/v1/nodes', { headers: k.admin.headers, json: { name: 'x', overlay_ip: '10.42.0.2' } });
    assert.equal(dupIp.status, 409);
  });

  it('lists with filters and pagination', async () => {
    const all = await call(s.url, 'GET', '/api/v1/nodes', { headers: k.admin.headers });
    assert.equal(all.status, 200);
    assert.ok(all.body.nodes.length >= 3);
    const admins = await call(s.url, 'GET', '/api/v1/nodes?is_admin=true', { headers: k.admin.headers });
    assert.deepEqual(
      admins.body.nodes.map((n: { name: string }) => n.name),
      ['admin'],
    );
    const named = await call(s.url, 'GET', '/api/v1/nodes?name=host', { headers: k.admin.headers });
    assert.equal(named.body.nodes.length, 1);
    const page = await call(s.url, 'GET', '/api/v1/nodes?limit=1&offset=1', { headers: k.admin.headers });
    assert.equal(page.body.nodes.length, 1);
    assert.equal(page.body.nodes[0].id, all.body.nodes[1].id);
    const badLimit = await call(s.url, 'GET', '/api/v1/nodes?limit=0', { headers: k.admin.headers });
    assert.equal(badLimit.status, 400);
    const badBool = await call(s.url, 'GET', '/api/v1/nodes?is_relay=maybe', { headers: k.admin.headers });
    assert.equal(badBool.status, 400);
    const opNeedsCluster = await call(s.url, 'GET', '/api/v1/nodes', { headers: s.op });
    assert.equal(opNeedsCluster.status, 400);
    const op = await call(s.url, 'GET', `/api/v1/nodes?cluster_id=${k.clusterId}`, { headers: s.op });
    assert.equal(op.body.nodes.length, all.body.nodes.length);
  });

  it('updates a node and bumps the config version', async () => {
    const before = await version();
    const r = await call(s.url, 'PATCH', `/api/v1/nodes/${k.node.id}`, {
      headers: k.admin.headers,
      json: { mtu: 1420, routes: ['172.16.0.0/12'], public_ip: '203.0.113.7' },
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.mtu, 1420);
    assert.equal(r.body.public_ip, '203.0.113.7');
    assert.equal(await version(), before + 1);
    const empty = await call(s.url, 'PATCH', `/api/v1/nodes/${k.node.id}`, { headers: k.admin.headers, json: {} });
    assert.equal(empty.status, 400);
    const cleared = await call(s.url, 'PATCH', `/api/v1/nodes/${k.node.id}`, { headers: k.admin.headers, json: { public_ip: null } });
    assert.equal(cleared.body.public_ip, null);
  });

  it('a plain node reads itself but cannot manage nodes', async () => {
    const self = await call(s.url, 'GET', `/api/v1/nodes/${k.node.id}`, { headers: k.node.headers });
    assert.equal(self.status, 200);
    const other = await call(s.url, 'GET', `/api/v1/nodes/${k.admin.id}`, { headers: k.node.headers });
    assert.equal(other.status, 403);
    const create = await call(s.url, 'POST', '/api/v1/nodes', { headers: k.node.headers, json: { name: 'sneaky' } });
    assert.equal(create.status, 403);
    assert.equal(create.body.code, 'FORBIDDEN');
    const list = await call(s.url, 'GET', '/api/v1/nodes', { headers: k.node.headers });
    assert.equal(list.status, 403);
    const patch = await call(s.url, 'PATCH', `/api/v1/nodes/${k.node.id}`, { headers: k.node.headers, json: { mtu: 9000 } });
    assert.equal(patch.status, 403);
  });

  it('the cluster token enrols plain nodes only', async () => {
    const h = { 'x-nebulagc-cluster-token': k.clusterToken };
    const plain = await call(s.url, 'POST', '/api/v1/nodes', { headers: h, json: { name: 'joined' } });
    assert.equal(plain.status, 201);
    assert.equal(plain.body.node.is_admin, false);
    const admin = await call(s.url, 'POST', '/api/v1/nodes', { headers: h, json: { name: 'joined-admin', is_admin: true } });
    assert.equal(admin.status, 403);
    const del = await call(s.url, 'DELETE', `/api/v1/nodes/${plain.body.node.id}`, { headers: h });
    assert.equal(del.status, 403);
  });

  it('rotates a node token', async () => {
    const n = await call(s.url, 'POST', '/api/v1/nodes', { headers: k.admin.headers, json: { name: 'rotating' } });
    const old = { 'x-nebulagc-node-token': n.body.token };
    const r = await call(s.url, 'POST', `/api/v1/nodes/${n.body.node.id}/rotate-token`, { headers: k.admin.headers });
    assert.equal(r.status, 200);
    assert.equal((await call(s.url, 'GET', '/api/v1/config/version', { headers: old })).status, 401);
    const viaBearer = { authorization: `Bearer ${r.body.token}` };
    assert.equal((await call(s.url, 'GET', '/api/v1/config/version', { headers: viaBearer })).status, 200);
  });

  it('deletes a node: its token stops working and the version moves', async () => {
    const n = await call(s.url, 'POST', '/api/v1/nodes', { headers: k.admin.headers, json: { name: 'doomed' } });
    const before = await version();
    const del = await call(s.url, 'DELETE', `/api/v1/nodes/${n.body.node.id}`, { headers: k.admin.headers });
    assert.equal(del.status, 204);
    assert.equal(await version(), before + 1);
    const h = { 'x-nebulagc-node-token': n.body.token };
    assert.equal((await call(s.url, 'GET', '/api/v1/config/version', { headers: h })).status, 401);
    const again = await call(s.url, 'DELETE', `/api/v1/nodes/${n.body.node.id}`, { headers: k.admin.headers });
    assert.equal(again.status, 404);
  });
});
