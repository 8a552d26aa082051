import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { seed, type Seeded } from '../helpers/fixtures.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

describe('errors and body limits', () => {
  let s: TestServer;
  let k: Seeded;
  before(async () => {
    s = await startTestServer({ NEBULAGC_MAX_BODY_BYTES: '1024' });
    k = await seed(s);
  });
  after(() => s.stop());

  const count = (table: string): number => {
    const db = new Database(s.dbPath, { readonly: true });
    const n = (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
    db.close();
    return n;
  };

  const raw = async (method: string, path: string, body: string, headers: Record<string, string>) => {
    const res = await fetch(s.url + path, { method, headers: { 'content-type': 'application/json', ...headers }, body });
    return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> };
  };

  it('every error is JSON {error, code, request_id} and echoes X-Request-Id', async () => {
    const r = await call(s.url, 'GET', '/api/v1/nodes/00000000-0000-4000-8000-000000000000', { headers: s.op });
    assert.equal(r.status, 404);
    assert.deepEqual(Object.keys(r.body).sort(), ['code', 'error', 'request_id']);
    assert.equal(r.headers.get('x-request-id'), r.body.request_id);
    const given = await call(s.url, 'GET', '/nowhere', { headers: { 'x-request-id': 'lb-trace-42' } });
    assert.equal(given.status, 404);
    assert.equal(given.headers.get('x-request-id'), 'lb-trace-42');
    assert.equal(given.body.request_id, 'lb-trace-42');
    const hostile = await call(s.url, 'GET', '/health/live', { headers: { 'x-request-id': 'x'.repeat(500) } });
    assert.notEqual(hostile.headers.get('x-request-id'), 'x'.repeat(500));
  });

  it('malformed JSON is INVALID_JSON and changes nothing', async () => {
    const before = count('tenants');
    for (const body of ['{"name":', '{name: "x"}', '[1,2', 'nul']) {
      const r = await raw('POST', '/api/v1/tenants', body, s.op);
      assert.equal(r.status, 400, body);
      assert.equal(r.body.code, 'INVALID_JSON');
    }
    const wrongShape = await raw('POST', '/api/v1/tenants', '"just a string"', s.op);
    assert.equal(wrongShape.status, 400);
    assert.equal(wrongShape.body.code, 'VALIDATION_FAILED');
    const noType = await fetch(`${s.url}/api/v1/tenants`, { method: 'POST', headers: s.op, body: '{"name":"x"}' });
    assert.equal(noType.status, 415);
    assert.equal(((await noType.json()) as { code: string }).code, 'UNSUPPORTED_MEDIA_TYPE');
    assert.equal(count('tenants'), before);
  });

  it('an oversize JSON body is PAYLOAD_TOO_LARGE and changes nothing', async () => {
    const before = count('nodes');
    const r = await raw('POST', '/api/v1/nodes', JSON.stringify({ name: 'big', routes: Array(200).fill('10.0.0.0/8') }), k.admin.headers);
    assert.equal(r.status, 413);
    assert.equal(r.body.code, 'PAYLOAD_TOO_LARGE');
    assert.equal(count('nodes'), before);
  });

  it('auth failures are 401 with AUTH_MISSING or AUTH_INVALID', async () => {
    const none = await call(s.url, 'GET', '/api/v1/tenants');
    assert.equal(none.status, 401);
    assert.equal(none.body.code, 'AUTH_MISSING');
    for (const authorization of ['Bearer wrong', 'Basic dXNlcjpwYXNz', 'Bearer', `Bearer ${'a'.repeat(2000)}`]) {
      const r = await call(s.url, 'GET', '/api/v1/tenants', { headers: { authorization } });
      assert.equal(r.status, 401, authorization.slice(0, 20));
      assert.equal(r.body.code, 'AUTH_INVALID');
    }
  });

  it('unknown routes and bad ids are 4xx, never 500', async () => {
    const cases: [string, string][] = [
      ['GET', '/api/v1/nodes/not-a-uuid'],
      ['GET', '/api/v1/nope'],
      ['DELETE', '/api/v1/tenants/%00'],
      ['GET', '/api/v1/config/bundles/-1'],
      ['PATCH', '/api/v1/tenants'],
    ];
    for (const [method, path] of cases) {
      const r = await call(s.url, method, path, { headers: s.op });
      assert.ok(r.status >= 400 && r.status < 500, `${method} ${path} -> ${r.status}`);
      assert.equal(typeof r.body.code, 'string');
    }
  });
});

describe('rate limits', () => {
  let s: TestServer;
  let k: Seeded;
  before(async () => {
    s = await startTestServer({
      NEBULAGC_RATE_LIMIT_NODE_RPS: '1',
      NEBULAGC_RATE_LIMIT_NODE_BURST: '3',
      NEBULAGC_RATE_LIMIT_CLUSTER_RPS: '1',
      NEBULAGC_RATE_LIMIT_CLUSTER_BURST: '100000',
    });
    k = await seed(s);
  });
  after(() => s.stop());

  it('limits one node, with X-RateLimit-* and Retry-After, without touching another node', async () => {
    const statuses: number[] = [];
    let last: Awaited<ReturnType<typeof call<{ code: string }>>> | undefined;
    for (let i = 0; i < 5; i++) {
      last = await call(s.url, 'GET', '/api/v1/config/version', { headers: k.node.headers });
      statuses.push(last.status);
      if (last.status === 200) assert.ok(last.headers.get('x-ratelimit-remaining') !== null);
    }
    assert.deepEqual(statuses.slice(0, 3), [200, 200, 200]);
    assert.equal(statuses[4], 429);
    assert.equal(last!.body.code, 'RATE_LIMITED');
    assert.ok(Number(last!.headers.get('retry-after')) >= 1);
    assert.equal(last!.headers.get('x-ratelimit-limit'), '3');
    assert.equal(last!.headers.get('x-ratelimit-remaining'), '0');
    const other = await call(s.url, 'GET', '/api/v1/config/version', { headers: k.admin.headers });
    assert.equal(other.status, 200);
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /nebulagc_rate_limited_total\{scope="node"\} [1-9]/);
  });
});

describe('per-cluster and per-IP limits', () => {
  it('a cluster limit covers all its nodes together', async () => {
    const s = await startTestServer({ NEBULAGC_RATE_LIMIT_CLUSTER_RPS: '1', NEBULAGC_RATE_LIMIT_CLUSTER_BURST: '4' });
    try {
      const k = await seed(s);
      const replies = [];
      for (let i = 0; i < 3; i++) {
        replies.push((await call(s.url, 'GET', '/api/v1/config/version', { headers: k.node.headers })).status);
        replies.push((await call(s.url, 'GET', '/api/v1/config/version', { headers: k.admin.headers })).status);
      }
      assert.deepEqual(replies.slice(0, 4), [200, 200, 200, 200]);
      assert.ok(replies.slice(4).includes(429), replies.join(','));
      const operatorUnaffected = await call(s.url, 'GET', `/api/v1/config/version?cluster_id=${k.clusterId}`, { headers: s.op });
      assert.equal(operatorUnaffected.status, 200);
    } finally {
      await s.stop();
    }
  });

  it('an IP limit applies before authentication', async () => {
    const s = await startTestServer({ NEBULAGC_RATE_LIMIT_IP_RPS: '1', NEBULAGC_RATE_LIMIT_IP_BURST: '3' });
    try {
      const statuses = [];
      for (let i = 0; i < 5; i++) statuses.push((await call(s.url, 'GET', '/api/v1/tenants', { headers: { authorization: 'Bearer guess' } })).status);
      assert.deepEqual(statuses.slice(0, 3), [401, 401, 401]);
      assert.equal(statuses[4], 429);
    } finally {
      await s.stop();
    }
  });
});
