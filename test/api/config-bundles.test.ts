import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { seed, type Seeded } from '../helpers/fixtures.js';
import { CA_PEM, makeTarGz, validBundle } from '../helpers/bundle.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

describe('config bundles', () => {
  let s: TestServer;
  let k: Seeded;
  before(async () => {
    s = await startTestServer({ NEBULAGC_MAX_BUNDLE_BYTES: String(256 * 1024) });
    k = await seed(s);
  });
  after(() => s.stop());

  // A node token gets its own rendered bundle (render.test.ts); the template is what the cluster token sees.
  let template: Record<string, string>;
  before(() => {
    template = { 'x-nebulagc-cluster-token': k.clusterToken };
  });

  const upload = (data: Buffer, headers = k.admin.headers, contentType = 'application/gzip') =>
    call(s.url, 'POST', '/api/v1/config/bundle', { headers, raw: data, contentType });

  /** Everything a bad upload could have touched. */
  const snapshot = () => {
    const db = new Database(s.dbPath, { readonly: true });
    const rows = db.prepare('SELECT cluster_id, version, sha256 FROM config_bundles ORDER BY cluster_id, version').all();
    const clusters = db.prepare('SELECT id, config_version, current_bundle_version FROM clusters ORDER BY id').all();
    db.close();
    return JSON.stringify({ rows, clusters });
  };

  it('a node sees 404 before any bundle exists', async () => {
    const r = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: template });
    assert.equal(r.status, 404);
    const v = await call(s.url, 'GET', '/api/v1/config/version', { headers: k.node.headers });
    assert.equal(v.body.bundle_version, null);
  });

  it('an admin uploads; the daemon polls the version and downloads with ETag, then gets 304', async () => {
    const data = await validBundle([{ name: 'extra/notes.txt', content: 'hello' }]);
    const sha = createHash('sha256').update(data).digest('hex');
    const before = (await call(s.url, 'GET', '/api/v1/config/version', { headers: k.node.headers })).body.config_version;
    const up = await upload(data);
    assert.equal(up.status, 201, JSON.stringify(up.body));
    assert.equal(up.body.version, 1);
    assert.equal(up.body.sha256, sha);
    assert.equal(up.body.created_by, `node:${k.admin.id}`);
    assert.equal(up.body.current, true);

    const v = await call(s.url, 'GET', '/api/v1/config/version', { headers: k.node.headers });
    assert.equal(v.body.config_version, before + 1);
    assert.equal(v.body.bundle_version, 1);
    assert.equal(v.body.bundle_sha256, sha);

    const got = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: template });
    assert.equal(got.status, 200);
    assert.equal(got.headers.get('content-type'), 'application/gzip');
    assert.equal(got.headers.get('etag'), `"${sha}"`);
    assert.deepEqual(got.body, data);

    const etag = got.headers.get('etag')!;
    const cached = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: { ...template, 'if-none-match': etag } });
    assert.equal(cached.status, 304);
    assert.equal(cached.headers.get('etag'), etag);
    assert.equal((cached.body as Buffer).length, 0);
    const weakInList = await call(s.url, 'GET', '/api/v1/config/bundle', {
      headers: { ...template, 'if-none-match': `"other", W/${etag}` },
    });
    assert.equal(weakInList.status, 304);
    const stale = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: { ...template, 'if-none-match': '"stale"' } });
    assert.equal(stale.status, 200);
  });

  it('a new version changes the ETag, and the old ETag no longer gets 304', async () => {
    const first = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: template });
    const oldTag = first.headers.get('etag')!;
    const up = await upload(await validBundle([], 'pki:\n  ca: ca.crt\ntun:\n  mtu: 1400\n'));
    assert.equal(up.status, 201);
    assert.equal(up.body.version, 2);
    const r = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: { ...template, 'if-none-match': oldTag } });
    assert.equal(r.status, 200);
    assert.notEqual(r.headers.get('etag'), oldTag);
    assert.equal(r.headers.get('x-nebulagc-bundle-version'), '2');
  });

  it('lists versions, downloads an old one, deletes an old one but never the current', async () => {
    const list = await call(s.url, 'GET', '/api/v1/config/bundles', { headers: k.admin.headers });
    assert.equal(list.status, 200);
    assert.deepEqual(
      list.body.bundles.map((b: { version: number; current: boolean }) => [b.version, b.current]),
      [
        [2, true],
        [1, false],
      ],
    );
    const v1 = await call(s.url, 'GET', '/api/v1/config/bundles/1', { headers: k.admin.headers });
    assert.equal(v1.status, 200);
    assert.equal(createHash('sha256').update(v1.body as Buffer).digest('hex'), list.body.bundles[1].sha256);
    const delCurrent = await call(s.url, 'DELETE', '/api/v1/config/bundles/2', { headers: k.admin.headers });
    assert.equal(delCurrent.status, 409);
    assert.equal(delCurrent.body.code, 'CONFLICT');
    const delOld = await call(s.url, 'DELETE', '/api/v1/config/bundles/1', { headers: k.admin.headers });
    assert.equal(delOld.status, 204);
    const missing = await call(s.url, 'GET', '/api/v1/config/bundles/1', { headers: k.admin.headers });
    assert.equal(missing.status, 404);
    const badVersion = await call(s.url, 'GET', '/api/v1/config/bundles/zero', { headers: k.admin.headers });
    assert.equal(badVersion.status, 400);
    const next = await upload(await validBundle());
    assert.equal(next.body.version, 3, 'versions keep counting up');
  });

  it('a plain node cannot upload, list or delete bundles', async () => {
    assert.equal((await upload(await validBundle(), k.node.headers)).status, 403);
    assert.equal((await call(s.url, 'GET', '/api/v1/config/bundles', { headers: k.node.headers })).status, 403);
    assert.equal((await call(s.url, 'DELETE', '/api/v1/config/bundles/2', { headers: k.node.headers })).status, 403);
  });

  it('the operator uploads to a named cluster', async () => {
    const r = await call(s.url, 'POST', `/api/v1/config/bundle?cluster_id=${k.clusterId}`, { headers: s.op, raw: await validBundle() });
    assert.equal(r.status, 201);
    assert.equal(r.body.created_by, 'operator');
    const noCluster = await call(s.url, 'POST', '/api/v1/config/bundle', { headers: s.op, raw: await validBundle() });
    assert.equal(noCluster.status, 400);
  });

  it('rejects hostile and broken bundles, leaving the stored bundles untouched', async () => {
    const cases: [string, Buffer, string][] = [
      ['traversal', await makeTarGz([{ name: 'config.yml', content: 'a: 1' }, { name: 'ca.crt', content: CA_PEM }, { name: '../../etc/passwd', content: 'x' }]), 'INVALID_BUNDLE'],
      ['absolute', await makeTarGz([{ name: '/etc/nebula/config.yml', content: 'a: 1' }, { name: 'ca.crt', content: CA_PEM }]), 'INVALID_BUNDLE'],
      ['symlink', await validBundle([{ name: 'evil', type: 'symlink', linkname: '/etc/shadow' }]), 'INVALID_BUNDLE'],
      ['hardlink', await validBundle([{ name: 'evil', type: 'link', linkname: 'config.yml' }]), 'INVALID_BUNDLE'],
      ['no config.yml', await makeTarGz([{ name: 'ca.crt', content: CA_PEM }]), 'INVALID_BUNDLE'],
      ['no ca.crt', await makeTarGz([{ name: 'config.yml', content: 'a: 1' }]), 'INVALID_BUNDLE'],
      ['bad yaml', await validBundle([], 'a: [1, 2\nb: }'), 'INVALID_BUNDLE'],
      ['not gzip', Buffer.from('plain text, not a bundle'), 'INVALID_BUNDLE'],
    ];
    const before = snapshot();
    for (const [label, data, code] of cases) {
      const r = await upload(data);
      assert.equal(r.status, 400, label);
      assert.equal(r.body.code, code, label);
      assert.ok(typeof r.body.error === 'string' && r.body.error.length > 0);
    }
    assert.equal(snapshot(), before);
  });

  it('rejects an oversize bundle while streaming, with nothing stored', async () => {
    const before = snapshot();
    const big = Buffer.alloc(300 * 1024, 7);
    big[0] = 0x1f;
    big[1] = 0x8b;
    const declared = await upload(big);
    assert.equal(declared.status, 413);
    assert.equal(declared.body.code, 'PAYLOAD_TOO_LARGE');
    // Without Content-Length (chunked), the limit is enforced as the stream arrives.
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent++ < 64) controller.enqueue(new Uint8Array(16 * 1024));
        else controller.close();
      },
    });
    const res = await fetch(`${s.url}/api/v1/config/bundle`, {
      method: 'POST',
      headers: { ...k.admin.headers, 'content-type': 'application/gzip' },
      body: stream,
      duplex: 'half',
    } as RequestInit);
    assert.equal(res.status, 413);
    assert.equal(((await res.json()) as { code: string }).code, 'PAYLOAD_TOO_LARGE');
    assert.equal(snapshot(), before);
  });

  it('rejects a wrong content type', async () => {
    const r = await upload(await validBundle(), k.admin.headers, 'text/plain');
    assert.equal(r.status, 415);
    assert.equal(r.body.code, 'UNSUPPORTED_MEDIA_TYPE');
  });
});
