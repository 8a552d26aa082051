import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { NebulaHost } from '../helpers/nebula.js';
import { call, startTestServer, TEST_ADMIN_TOKEN, type TestServer } from '../helpers/server.js';

describe('tenants and clusters', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.stop());

  it('creates, lists, gets and deletes a tenant', async () => {
    const created = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'acme' } });
    assert.equal(created.status, 201);
    assert.equal(created.body.name, 'acme');
    const list = await call(s.url, 'GET', '/api/v1/tenants', { headers: s.op });
    assert.equal(list.status, 200);
    assert.ok(list.body.tenants.some((t: { id: string }) => t.id === created.body.id));
    const got = await call(s.url, 'GET', `/api/v1/tenants/${created.body.id}`, { headers: s.op });
    assert.deepEqual(got.body, created.body);
    const del = await call(s.url, 'DELETE', `/api/v1/tenants/${created.body.id}`, { headers: s.op });
    assert.equal(del.status, 204);
    const gone = await call(s.url, 'GET', `/api/v1/tenants/${created.body.id}`, { headers: s.op });
    assert.equal(gone.status, 404);
    assert.equal(gone.body.code, 'NOT_FOUND');
  });

  it('refuses a duplicate tenant name with CONFLICT', async () => {
    await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'dup' } });
    const again = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'dup' } });
    assert.equal(again.status, 409);
    assert.equal(again.body.code, 'CONFLICT');
  });

  it('rejects invalid tenant names and unknown fields', async () => {
    for (const json of [{ name: '' }, { name: '../x' }, { name: 'a'.repeat(65) }, { name: 'ok', extra: 1 }, {}]) {
      const r = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json });
      assert.equal(r.status, 400, JSON.stringify(json));
      assert.equal(r.body.code, 'VALIDATION_FAILED');
      assert.ok(r.body.request_id);
    }
  });

  it('creates a cluster, returns its token once, and lists it by tenant', async () => {
    const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'with-clusters' } });
    const c = await call(s.url, 'POST', '/api/v1/clusters', {
      headers: s.op,
      json: { tenant_id: t.body.id, name: 'prod', lighthouse_port: 4243 },
    });
    assert.equal(c.status, 201);
    assert.match(c.body.token, /^ngc_cluster_[A-Za-z0-9_-]{43}$/);
    assert.equal(c.body.cluster.lighthouse_port, 4243);
    assert.equal(c.body.cluster.config_version, 1);
    assert.equal('token_hash' in c.body.cluster, false);
    const got = await call(s.url, 'GET', `/api/v1/clusters/${c.body.cluster.id}`, { headers: s.op });
    assert.equal(got.status, 200);
    assert.equal('token' in got.body, false);
    const list = await call(s.url, 'GET', `/api/v1/clusters?tenant_id=${t.body.id}`, { headers: s.op });
    assert.deepEqual(
      list.body.clusters.map((x: { name: string }) => x.name),
      ['prod'],
    );
    const dup = await call(s.url, 'POST', '/api/v1/clusters', { headers: s.op, json: { tenant_id: t.body.id, name: 'prod' } });
    assert.equal(dup.status, 409);
    const tenantInUse = await call(s.url, 'DELETE', `/api/v1/tenants/${t.body.id}`, { headers: s.op });
    assert.equal(tenantInUse.status, 409);
  });

  it('refuses a cluster for a missing tenant', async () => {
    const r = await call(s.url, 'POST', '/api/v1/clusters', {
      headers: s.op,
      json: { tenant_id: '00000000-0000-4000-8000-000000000000', name: 'orphan' },
    });
    assert.equal(r.status, 404);
    assert.equal(r.body.code, 'NOT_FOUND');
  });

  it('encrypts a supplied CA key at rest and never returns it', async () => {
    const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'with-ca' } });
    const host = new NebulaHost();
    const own = host.ca('supplied');
    host.cleanup();
    const key = own.key;
    const secret = key.split('\n')[1]!.slice(0, 40);
    const c = await call(s.url, 'POST', '/api/v1/clusters', {
      headers: s.op,
      json: { tenant_id: t.body.id, name: 'ca', ca_cert: own.cert, ca_key: key },
    });
    assert.equal(c.status, 201, JSON.stringify(c.body));
    assert.equal(c.body.cluster.has_ca_key, true);
    assert.equal(c.body.cluster.ca_cert, own.cert);
    assert.equal(JSON.stringify(c.body).includes(secret), false);
    const db = new Database(s.dbPath, { readonly: true });
    const row = db.prepare('SELECT ca_key_encrypted FROM clusters WHERE id = ?').get(c.body.cluster.id) as { ca_key_encrypted: Buffer };
    db.close();
    assert.equal(row.ca_key_encrypted.includes(Buffer.from(secret)), false);
    const onlyKey = await call(s.url, 'POST', '/api/v1/clusters', { headers: s.op, json: { tenant_id: t.body.id, name: 'half', ca_key: key } });
    assert.equal(onlyKey.status, 400);
  });

  it('rotates the cluster token: the old one stops working, the new one works', async () => {
    const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'rot' } });
    const c = await call(s.url, 'POST', '/api/v1/clusters', { headers: s.op, json: { tenant_id: t.body.id, name: 'rot' } });
    const old = { 'x-nebulagc-cluster-token': c.body.token };
    assert.equal((await call(s.url, 'GET', '/api/v1/config/version', { headers: old })).status, 200);
    const rotated = await call(s.url, 'POST', `/api/v1/clusters/${c.body.cluster.id}/rotate-token`, { headers: s.op });
    assert.equal(rotated.status, 200);
    assert.notEqual(rotated.body.token, c.body.token);
    assert.equal((await call(s.url, 'GET', '/api/v1/config/version', { headers: old })).status, 401);
    const fresh = { 'x-nebulagc-cluster-token': rotated.body.token };
    assert.equal((await call(s.url, 'GET', '/api/v1/config/version', { headers: fresh })).status, 200);
  });

  it('deletes a cluster with its nodes', async () => {
    const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'del' } });
    const c = await call(s.url, 'POST', '/api/v1/clusters', { headers: s.op, json: { tenant_id: t.body.id, name: 'del' } });
    const n = await call(s.url, 'POST', '/api/v1/nodes', { headers: s.op, json: { cluster_id: c.body.cluster.id, name: 'n' } });
    assert.equal((await call(s.url, 'DELETE', `/api/v1/clusters/${c.body.cluster.id}`, { headers: s.op })).status, 204);
    const nodeCall = await call(s.url, 'GET', '/api/v1/config/version', { headers: { 'x-nebulagc-node-token': n.body.token } });
    assert.equal(nodeCall.status, 401);
    assert.equal((await call(s.url, 'GET', `/api/v1/clusters/${c.body.cluster.id}`, { headers: s.op })).status, 404);
  });

  it('rotates the operator token', async () => {
    const rotated = await call(s.url, 'POST', '/api/v1/operator/rotate-token', { headers: s.op });
    assert.equal(rotated.status, 200);
    assert.match(rotated.body.token, /^ngc_op_/);
    const old = await call(s.url, 'GET', '/api/v1/tenants', { headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
    assert.equal(old.status, 401);
    assert.equal(old.body.code, 'AUTH_INVALID');
    const fresh = await call(s.url, 'GET', '/api/v1/tenants', { headers: { authorization: `Bearer ${rotated.body.token}` } });
    assert.equal(fresh.status, 200);
    s.op = { authorization: `Bearer ${rotated.body.token}` };
  });
});
