import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { clusterDir, REPLICATION_SECRET, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { TEST_ADMIN_TOKEN } from '../helpers/server.js';

/** A CA, and certificates it signs for 127.0.0.1, made with the real openssl. */
function makePki(dir: string): { ca: string; server: { cert: string; key: string }; rogue: { cert: string; key: string } } {
  const run = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const f = (name: string): string => path.join(dir, name);
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=nebulagc-test-ca', '-keyout', f('ca.key'), '-out', f('ca.crt'));
  writeFileSync(f('san.ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n');
  run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=node', '-keyout', f('node.key'), '-out', f('node.csr'));
  run('x509', '-req', '-in', f('node.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f('san.ext'), '-out', f('node.crt'));
  // A certificate from a CA the nodes do not trust.
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=rogue', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', f('rogue.key'), '-out', f('rogue.crt'));
  return { ca: f('ca.crt'), server: { cert: f('node.crt'), key: f('node.key') }, rogue: { cert: f('rogue.crt'), key: f('rogue.key') } };
}

function get(url: string, opts: https.RequestOptions): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { ...opts, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('replication over mutual TLS', { timeout: 60_000 }, () => {
  const dir = clusterDir('mtls');
  let pki: ReturnType<typeof makePki>;
  let master: ServerProcess;
  let replica: ServerProcess;

  before(async () => {
    pki = makePki(dir.root);
    const tls = { NEBULAGC_TLS_CERT: pki.server.cert, NEBULAGC_TLS_KEY: pki.server.key, NEBULAGC_TLS_CA: pki.ca };
    // The helper polls plain HTTP for liveness; TLS nodes are polled here instead.
    master = await startNode('master', dir.root, { NEBULAGC_HA_MODE: 'master', ...tls }, undefined, 'https');
    replica = await startNode(
      'replica',
      dir.root,
      { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, ...tls },
      undefined,
      'https',
    );
  });
  after(async () => {
    await replica?.stop();
    await master?.stop();
    dir.remove();
  });

  const ca = (): Buffer => readFileSync(pki.ca);

  it('a replica with a certificate the CA signed follows the master', async () => {
    const auth = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
    const post = await new Promise<number>((resolve, reject) => {
      const req = https.request(`${master.url}/api/v1/tenants`, { method: 'POST', ca: ca(), headers: { ...auth, 'content-type': 'application/json' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end(JSON.stringify({ name: 'over-tls' }));
    });
    assert.equal(post, 201);
    const seen = await waitUntil(async () => (await get(`${replica.url}/api/v1/tenants`, { ca: ca(), headers: auth })).body.includes('over-tls'));
    assert.ok(seen, `replica never showed the tenant:\n${replica.output().slice(-2000)}`);
  });

  it('internal endpoints refuse a client without a certificate, or with an untrusted one, even with the right secret', async () => {
    const headers = { authorization: `Bearer ${REPLICATION_SECRET}` };
    const none = await get(`${master.url}/internal/v1/replication/snapshot`, { ca: ca(), headers });
    assert.equal(none.status, 401);
    assert.match(none.body, /client certificate/);
    const rogue = await get(`${master.url}/internal/v1/replication/snapshot`, {
      ca: ca(),
      headers,
      cert: readFileSync(pki.rogue.cert),
      key: readFileSync(pki.rogue.key),
    });
    assert.equal(rogue.status, 401);
    const good = await get(`${master.url}/internal/v1/replication/ack`, {
      ca: ca(),
      headers,
      cert: readFileSync(pki.server.cert),
      key: readFileSync(pki.server.key),
    });
    assert.equal(good.status, 404, 'past the certificate check (ack is POST-only)');
  });

  it('the public API still works without a client certificate', async () => {
    const r = await get(`${master.url}/health`, { ca: ca() });
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).ha_mode, 'master');
  });
});
