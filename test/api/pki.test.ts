import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { after, before, describe, it } from 'node:test';
import { seed, type Seeded } from '../helpers/fixtures.js';
import { NebulaHost } from '../helpers/nebula.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

/** Cluster PKI with the real nebula-cert: the CA, enrollment, the blocklist and CA rotation. */
describe('cluster PKI', () => {
  let s: TestServer;
  let k: Seeded;
  let host: NebulaHost;
  before(async () => {
    s = await startTestServer({ NEBULAGC_CERT_LIFETIME: '24h' });
    k = await seed(s);
    host = new NebulaHost();
  });
  after(async () => {
    host.cleanup();
    await s.stop();
  });

  const cluster = async (id = k.clusterId) => (await call(s.url, 'GET', `/api/v1/clusters/${id}`, { headers: s.op })).body;
  const enroll = (headers: Record<string, string>, json: unknown) => call(s.url, 'POST', '/api/v1/enroll', { headers, json });
  const blocklist = async (): Promise<string[]> =>
    (await call(s.url, 'GET', '/api/v1/pki/blocklist', { headers: k.node.headers })).body.fingerprints;
  const newNode = async (json: Record<string, unknown>) => {
    const r = await call(s.url, 'POST', '/api/v1/nodes', { headers: s.op, json: { cluster_id: k.clusterId, ...json } });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return { id: r.body.node.id as string, headers: { 'x-nebulagc-node-token': r.body.token as string } };
  };

  it('creates the cluster CA with nebula-cert and keeps its key encrypted', async () => {
    const c = await cluster();
    assert.match(c.ca_cert, /^-----BEGIN NEBULA CERTIFICATE-----/);
    assert.equal(c.has_ca_key, true);
    assert.equal(c.overlay_cidr, '10.42.0.0/16');
    const info = host.print(c.ca_cert);
    assert.equal(info.details.isCa, true);
    assert.deepEqual(info.details.ips, ['10.42.0.0/16']);
    const db = new Database(s.dbPath, { readonly: true });
    try {
      const row = db.prepare('SELECT ca_key_encrypted FROM clusters WHERE id = ?').get(k.clusterId) as { ca_key_encrypted: Buffer };
      assert.ok(row.ca_key_encrypted.length > 64);
      for (const needle of ['PRIVATE KEY', 'NEBULA ED25519']) assert.equal(row.ca_key_encrypted.includes(Buffer.from(needle)), false);
    } finally {
      db.close();
    }
  });

  it('enrolls a node: the certificate verifies against the CA and carries its name, IP and groups', async () => {
    const patched = await call(s.url, 'PATCH', `/api/v1/nodes/${k.node.id}`, { headers: s.op, json: { groups: ['web', 'prod'] } });
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    const before = (await cluster()).config_version;
    const { publicKey } = host.keygen('host');
    const r = await enroll(k.node.headers, { public_key: publicKey });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.ca_certificate, (await cluster()).ca_cert);
    assert.equal(host.verify(r.body.ca_certificate, r.body.certificate).status, 0);
    const printed = host.print(r.body.certificate);
    assert.equal(printed.details.name, 'host');
    assert.deepEqual(printed.details.ips, ['10.42.0.2/16']);
    assert.deepEqual(printed.details.groups, ['web', 'prod']);
    assert.equal(r.body.fingerprint, printed.fingerprint);
    assert.equal(r.body.expires_at, new Date(printed.details.notAfter).toISOString());
    const lifetimeH = (Date.parse(printed.details.notAfter) - Date.parse(printed.details.notBefore)) / 3_600_000;
    assert.ok(Math.abs(lifetimeH - 24) < 0.01, `NEBULAGC_CERT_LIFETIME=24h gave ${lifetimeH} h`);
    const node = (await call(s.url, 'GET', `/api/v1/nodes/${k.node.id}`, { headers: k.node.headers })).body;
    assert.equal(node.cert_fingerprint, r.body.fingerprint);
    assert.equal(node.cert_expires_at, r.body.expires_at);
    assert.ok((await cluster()).config_version > before);
  });

  it('renewal with the same key and grants does not blocklist; a new key does', async () => {
    const n = await newNode({ name: 'renew', overlay_ip: '10.42.1.1' });
    const { publicKey } = host.keygen('renew');
    const first = await enroll(n.headers, { public_key: publicKey });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    // Certificates carry whole seconds, and Ed25519 is deterministic: within the same second a
    // renewal is byte-identical.
    await new Promise((r) => setTimeout(r, 1100));
    const second = await enroll(n.headers, { public_key: publicKey });
    assert.equal(second.status, 200);
    assert.notEqual(second.body.fingerprint, first.body.fingerprint);
    assert.equal((await blocklist()).includes(first.body.fingerprint), false, 'same key and grants: nothing to revoke');
    const third = await enroll(n.headers, { public_key: host.keygen('renew-2').publicKey });
    assert.equal(third.status, 200);
    assert.ok((await blocklist()).includes(second.body.fingerprint), 'a replaced key is revoked');
  });

  it('changing a node’s IP or groups revokes its certificate', async () => {
    const n = await newNode({ name: 'mover', overlay_ip: '10.42.1.2' });
    const r = await enroll(n.headers, { public_key: host.keygen('mover').publicKey });
    assert.equal(r.status, 200);
    const moved = await call(s.url, 'PATCH', `/api/v1/nodes/${n.id}`, { headers: s.op, json: { overlay_ip: '10.42.1.3' } });
    assert.equal(moved.body.cert_fingerprint, null);
    assert.ok((await blocklist()).includes(r.body.fingerprint));
    const again = await enroll(n.headers, { public_key: host.keygen('mover-2').publicKey });
    assert.deepEqual(host.print(again.body.certificate).details.ips, ['10.42.1.3/16']);
    // An MTU change leaves the certificate alone.
    const mtu = await call(s.url, 'PATCH', `/api/v1/nodes/${n.id}`, { headers: s.op, json: { mtu: 1400 } });
    assert.equal(mtu.body.cert_fingerprint, again.body.fingerprint);
  });

  it('refuses a private key, wherever it is in the body', async () => {
    const { publicKey, privateKey } = host.keygen('leak');
    for (const json of [{ public_key: privateKey }, { public_key: publicKey, private_key: privateKey }, { key: privateKey }]) {
      const r = await enroll(k.node.headers, json);
      assert.equal(r.status, 400, JSON.stringify(json));
      assert.equal(r.body.code, 'VALIDATION_FAILED');
      assert.match(r.body.error, /private key must never leave its host/);
      assert.equal(JSON.stringify(r.body).includes(privateKey.split('\n')[1]!), false);
    }
  });

  it('refuses a malformed public key', async () => {
    for (const public_key of ['', 'hello', '-----BEGIN NEBULA X25519 PUBLIC KEY-----\nAAAA\n-----END NEBULA X25519 PUBLIC KEY-----\n']) {
      const r = await enroll(k.node.headers, { public_key });
      assert.equal(r.status, 400, public_key);
      assert.equal(r.body.code, 'VALIDATION_FAILED');
    }
  });

  it('a node without overlay_ip, or outside the network, gets 400', async () => {
    const { publicKey } = host.keygen('noip');
    const noIp = await newNode({ name: 'no-ip' });
    const r = await enroll(noIp.headers, { public_key: publicKey });
    assert.equal(r.status, 400);
    assert.match(r.body.error, /no overlay_ip/);
    const outside = await newNode({ name: 'outside', overlay_ip: '10.99.0.1' });
    const r2 = await enroll(outside.headers, { public_key: publicKey });
    assert.equal(r2.status, 400);
    assert.match(r2.body.error, /outside the cluster's overlay network 10\.42\.0\.0\/16/);
  });

  it('only a node token enrolls, and only for itself', async () => {
    const { publicKey } = host.keygen('who');
    for (const headers of [s.op, { 'x-nebulagc-cluster-token': k.clusterToken }]) {
      assert.equal((await enroll(headers, { public_key: publicKey })).status, 403);
    }
    assert.equal((await enroll({}, { public_key: publicKey })).status, 401);
  });

  it('another cluster’s tokens can neither read this blocklist nor enroll here', async () => {
    const other = await seed(s);
    const forOther = await call(s.url, 'GET', `/api/v1/pki/blocklist?cluster_id=${k.clusterId}`, { headers: other.node.headers });
    assert.equal(forOther.status, 403);
    const viaCluster = await call(s.url, 'GET', `/api/v1/pki/blocklist?cluster_id=${k.clusterId}`, {
      headers: { 'x-nebulagc-cluster-token': other.clusterToken },
    });
    assert.equal(viaCluster.status, 403);
    // Its node enrolls into its own cluster, with its own CA.
    const r = await enroll(other.node.headers, { public_key: host.keygen('other').publicKey });
    assert.equal(r.status, 200);
    assert.equal(r.body.ca_certificate, (await cluster(other.clusterId)).ca_cert);
    assert.notEqual(host.verify((await cluster()).ca_cert, r.body.certificate).status, 0);
    const own = await call(s.url, 'GET', '/api/v1/pki/blocklist', { headers: { 'x-nebulagc-cluster-token': other.clusterToken } });
    assert.deepEqual(own.body, { cluster_id: other.clusterId, fingerprints: [], entries: [] });
    const op = await call(s.url, 'GET', '/api/v1/pki/blocklist', { headers: s.op });
    assert.equal(op.status, 400);
    const missing = await call(s.url, 'GET', '/api/v1/pki/blocklist?cluster_id=00000000-0000-4000-8000-000000000000', { headers: s.op });
    assert.equal(missing.status, 404);
  });

  it('deleting a node puts its certificate on the blocklist and moves config_version', async () => {
    const n = await newNode({ name: 'doomed', overlay_ip: '10.42.2.1' });
    const r = await enroll(n.headers, { public_key: host.keygen('doomed').publicKey });
    assert.equal(r.status, 200);
    const before = (await cluster()).config_version;
    assert.equal((await call(s.url, 'DELETE', `/api/v1/nodes/${n.id}`, { headers: s.op })).status, 204);
    assert.ok((await cluster()).config_version > before);
    const list = await call(s.url, 'GET', `/api/v1/pki/blocklist?cluster_id=${k.clusterId}`, { headers: s.op });
    assert.equal(list.status, 200);
    assert.ok(list.body.fingerprints.includes(r.body.fingerprint));
    const entry = list.body.entries.find((e: { fingerprint: string }) => e.fingerprint === r.body.fingerprint);
    assert.deepEqual({ ...entry, revoked_at: undefined }, {
      fingerprint: r.body.fingerprint,
      node_id: n.id,
      node_name: 'doomed',
      reason: 'deleted',
      expires_at: r.body.expires_at,
      revoked_at: undefined,
    });
    // The revoked node's token is gone with it.
    assert.equal((await enroll(n.headers, { public_key: host.keygen('doomed-2').publicKey })).status, 401);
  });

  it('rotating the CA replaces ca_cert; old certificates no longer verify and nodes enroll again', async () => {
    const { publicKey } = host.keygen('rotate');
    const old = await enroll(k.node.headers, { public_key: publicKey });
    assert.equal(old.status, 200);
    const before = await cluster();
    assert.ok((await blocklist()).length > 0);
    const plain = await call(s.url, 'POST', `/api/v1/clusters/${k.clusterId}/rotate-ca`, { headers: k.admin.headers });
    assert.equal(plain.status, 403);
    const r = await call(s.url, 'POST', `/api/v1/clusters/${k.clusterId}/rotate-ca`, { headers: s.op });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.notEqual(r.body.ca_cert, before.ca_cert);
    assert.equal(r.body.has_ca_key, true);
    assert.ok(r.body.config_version > before.config_version);
    assert.notEqual(host.verify(r.body.ca_cert, old.body.certificate).status, 0);
    assert.deepEqual(await blocklist(), [], 'the old CA’s revocations go with it');
    const node = (await call(s.url, 'GET', `/api/v1/nodes/${k.node.id}`, { headers: k.node.headers })).body;
    assert.equal(node.cert_fingerprint, null);
    const fresh = await enroll(k.node.headers, { public_key: publicKey });
    assert.equal(fresh.status, 200);
    assert.equal(fresh.body.ca_certificate, r.body.ca_cert);
    assert.equal(host.verify(r.body.ca_cert, fresh.body.certificate).status, 0);
    const gone = await call(s.url, 'POST', '/api/v1/clusters/00000000-0000-4000-8000-000000000000/rotate-ca', { headers: s.op });
    assert.equal(gone.status, 404);
  });

  it('takes an operator’s own CA after checking it, and a custom overlay network', async () => {
    const own = host.ca('own-ca', ['-ips', '10.50.0.0/16']);
    const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'byo' } });
    const create = (json: Record<string, unknown>) => call(s.url, 'POST', '/api/v1/clusters', { headers: s.op, json: { tenant_id: t.body.id, ...json } });
    const mismatched = await create({ name: 'bad-key', ca_cert: own.cert, ca_key: host.ca('stranger').key, overlay_cidr: '10.50.0.0/16' });
    assert.equal(mismatched.status, 400);
    assert.match(mismatched.body.error, /does not match private key/);
    const outside = await create({ name: 'outside', ca_cert: own.cert, ca_key: own.key });
    assert.equal(outside.status, 400, 'the CA only allows 10.50.0.0/16, the default network is 10.42.0.0/16');
    const garbage = await create({ name: 'garbage', ca_cert: 'not a cert', ca_key: own.key });
    assert.equal(garbage.status, 400);
    for (const overlay_cidr of ['10.50.0.1/16', '10.0.0.0/31', 'x']) assert.equal((await create({ name: 'cidr', overlay_cidr })).status, 400, overlay_cidr);
    const c = await create({ name: 'good', ca_cert: own.cert, ca_key: own.key, overlay_cidr: '10.50.0.0/16' });
    assert.equal(c.status, 201, JSON.stringify(c.body));
    assert.equal(c.body.cluster.ca_cert, own.cert);
    assert.equal(c.body.cluster.overlay_cidr, '10.50.0.0/16');
    const n = await call(s.url, 'POST', '/api/v1/nodes', { headers: s.op, json: { cluster_id: c.body.cluster.id, name: 'n', overlay_ip: '10.50.7.7' } });
    const r = await enroll({ 'x-nebulagc-node-token': n.body.token }, { public_key: host.keygen('byo').publicKey });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(host.verify(own.cert, r.body.certificate).status, 0);
    assert.deepEqual(host.print(r.body.certificate).details.ips, ['10.50.7.7/16']);
  });
});

describe('cluster PKI without nebula-cert', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ NEBULAGC_NEBULA_CERT_BIN: '/nonexistent/nebula-cert' });
  });
  after(() => s.stop());

  it('answers 503 PKI_UNAVAILABLE, not 500, and creates nothing', async () => {
    const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'no-pki' } });
    const r = await call(s.url, 'POST', '/api/v1/clusters', { headers: s.op, json: { tenant_id: t.body.id, name: 'c' } });
    assert.equal(r.status, 503);
    assert.equal(r.body.code, 'PKI_UNAVAILABLE');
    assert.match(r.body.error, /NEBULAGC_NEBULA_CERT_BIN/);
    assert.deepEqual((await call(s.url, 'GET', '/api/v1/clusters', { headers: s.op })).body.clusters, []);
  });
});
