import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../../server/src/config.js';
import { createLogger } from '../../server/src/log.js';
import { startServer } from '../../server/src/server.js';
import { seed, type Seeded } from '../helpers/fixtures.js';
import { validBundle } from '../helpers/bundle.js';
import { call, startTestServer, TEST_ADMIN_TOKEN, TEST_SECRET, type TestServer } from '../helpers/server.js';

describe('system endpoints', () => {
  let s: TestServer;
  let k: Seeded;
  before(async () => {
    s = await startTestServer({ NEBULAGC_NODE_ID: 'cp-test-1' });
    k = await seed(s);
  });
  after(() => s.stop());

  it('/health reports status, ha_mode, node_id, version and timestamp', async () => {
    const r = await call(s.url, 'GET', '/health');
    assert.equal(r.status, 200);
    assert.equal(r.body.status, 'healthy');
    assert.equal(r.body.ha_mode, 'standalone');
    assert.equal(r.body.node_id, 'cp-test-1');
    assert.match(r.body.version, /^\d+\.\d+\.\d+/);
    assert.ok(Math.abs(Date.parse(r.body.timestamp) - Date.now()) < 60_000);
    assert.equal(r.body.checks.database.ok, true);
  });

  it('/health/live, /health/ready and /health/master answer 200 on a writable standalone node', async () => {
    for (const p of ['/health/live', '/health/ready', '/health/master']) assert.equal((await call(s.url, 'GET', p)).status, 200, p);
  });

  it('every health route answers HEAD with the status GET gives, and no body, so load balancers can check with HEAD', async () => {
    const routes = ['/health', '/health/live', '/health/ready', '/health/master', '/health/replica', '/health/replica?max_lag_ms=100', '/version'];
    for (const p of routes) {
      const get = await fetch(s.url + p);
      await get.arrayBuffer();
      const head = await fetch(s.url + p, { method: 'HEAD' });
      assert.equal(head.status, get.status, `HEAD ${p}`);
      assert.equal((await head.arrayBuffer()).byteLength, 0, `HEAD ${p} has no body`);
    }
    assert.equal((await fetch(s.url + '/health/replica', { method: 'HEAD' })).status, 503, 'a standalone node is not a replica');
  });

  it('/health/master and /health report a node that refuses writes, and the write path says so', async () => {
    s.server.store.writer.refuse('test');
    try {
      assert.equal((await call(s.url, 'GET', '/health/master')).status, 503);
      assert.equal((await call(s.url, 'GET', '/health')).body.status, 'degraded');
      const w = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'refused' } });
      assert.equal(w.status, 503);
      assert.equal(w.body.code, 'NOT_WRITABLE');
      assert.equal(w.headers.get('retry-after'), '1');
      const read = await call(s.url, 'GET', '/api/v1/tenants', { headers: s.op });
      assert.equal(read.status, 200, 'reads still work');
    } finally {
      s.server.store.writer.allow();
    }
  });

  it('/version', async () => {
    const r = await call(s.url, 'GET', '/version');
    assert.equal(r.status, 200);
    assert.equal(r.body.node_id, 'cp-test-1');
  });

  it('/metrics exposes HTTP, db, heartbeat and HA metrics with real values', async () => {
    await call(s.url, 'GET', '/api/v1/config/version', { headers: k.node.headers });
    const res = await fetch(`${s.url}/metrics`);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    assert.match(text, /nebulagc_http_requests_total\{method="GET",route="\/api\/v1\/config\/version",status="200"\} [1-9]/);
    assert.match(text, /nebulagc_http_request_duration_seconds_bucket\{le="0.005",method="GET",route="\/api\/v1\/config\/version"\}/);
    assert.match(text, /nebulagc_db_write_transactions_total\{op="node.create"\} 2/);
    // Every commit is timed: as many observations as write transactions counted (give or take
    // one background write committed between the two metrics' collection).
    const writes = [...text.matchAll(/^nebulagc_db_write_transactions_total\{[^}]*\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
    const timed = Number(/^nebulagc_db_write_duration_seconds_count (\d+)$/m.exec(text)?.[1]);
    assert.ok(writes >= 2);
    assert.ok(timed > 0 && Math.abs(timed - writes) <= 1, `${timed} timed writes against ${writes} counted`);
    assert.match(text, /^nebulagc_db_size_bytes [1-9]\d*/m);
    assert.match(text, /^nebulagc_ha_is_master 1$/m);
    assert.match(text, /^nebulagc_ha_replicas_total 0$/m);
    for (const name of [
      'nebulagc_ha_heartbeat_errors_total',
      'nebulagc_ha_heartbeat_duration_seconds',
      'nebulagc_ha_last_heartbeat',
      'nebulagc_ha_state_transitions_total',
      'nebulagc_db_wal_size_bytes',
      'nebulagc_heartbeats_pending',
    ]) {
      assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
    }
    assert.doesNotMatch(text, /route="\/api\/v1\/\*"/, 'route labels name real routes, not middleware');
  });

  it('/openapi.json documents every API route', async () => {
    const r = await call(s.url, 'GET', '/openapi.json');
    assert.equal(r.status, 200);
    const paths = Object.keys(r.body.paths);
    for (const p of [
      '/api/v1/tenants',
      '/api/v1/clusters',
      '/api/v1/clusters/{id}/rotate-token',
      '/api/v1/nodes',
      '/api/v1/nodes/{id}',
      '/api/v1/config/version',
      '/api/v1/config/bundle',
      '/api/v1/config/bundles/{version}',
      '/api/v1/topology/lighthouses',
      '/api/v1/routes',
      '/api/v1/heartbeat',
      '/health',
    ]) {
      assert.ok(paths.includes(p), p);
    }
    assert.ok(r.body.components.securitySchemes.nodeToken);
  });

  it('no route answers 500 to garbage, with any kind of token', async () => {
    const spec = (await call(s.url, 'GET', '/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
    const tokens = [s.op, k.admin.headers, k.node.headers, { 'x-nebulagc-cluster-token': k.clusterToken }, {}];
    const bodies = ['', '{', '[]', 'null', '{"name":123,"routes":"x","mtu":"big"}', '\u0000\u0001', '{"cluster_id":"../../etc"}'];
    const ids = ['00000000-0000-4000-8000-000000000000', 'x', '%2e%2e', '1e9'];
    let calls = 0;
    // Rotating the operator token ignores its body and would lock the rest of the loop out.
    const targets = Object.entries(spec.paths).filter(([p]) => p !== '/api/v1/operator/rotate-token');
    for (const [template, ops] of targets) {
      for (const method of Object.keys(ops)) {
        for (const id of ids) {
          const url = template.replace('{id}', id).replace('{version}', id);
          for (const headers of tokens) {
            for (const body of method === 'get' || method === 'delete' ? [undefined] : bodies) {
              const res = await fetch(`${s.url}${url}?cluster_id=${id}&limit=-1`, {
                method: method.toUpperCase(),
                headers: { ...headers, 'content-type': 'application/json' },
                body,
              });
              calls++;
              const roleCheck = url === '/health/master' || url === '/health/replica';
              assert.ok(res.status < 500 || (roleCheck && res.status === 503), `${method} ${url} -> ${res.status}`);
              if (res.status >= 400 && !roleCheck) {
                const j = (await res.json()) as { code?: string };
                assert.equal(typeof j.code, 'string', `${method} ${url}`);
              } else {
                await res.arrayBuffer();
              }
            }
          }
        }
      }
    }
    assert.ok(calls > 500);
    const still = await call(s.url, 'GET', `/api/v1/nodes/${k.node.id}`, { headers: s.op });
    assert.equal(still.body.mtu, 1300, 'garbage changed nothing');
  });
});

describe('logs', () => {
  it('never contain a token or the server secret, even at trace level', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-logs-'));
    const config = loadConfig(
      {},
      {
        NEBULAGC_LISTEN: '127.0.0.1:0',
        NEBULAGC_DB_PATH: path.join(dir, 'db'),
        NEBULAGC_HMAC_SECRET: TEST_SECRET,
        NEBULAGC_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
        NEBULAGC_LOG_LEVEL: 'trace',
      },
    );
    const server = await startServer(config, createLogger('trace', sink));
    const s = { url: server.url, op: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } } as unknown as TestServer;
    try {
      const k = await seed(s);
      await call(s.url, 'POST', '/api/v1/config/bundle', { headers: k.admin.headers, raw: await validBundle() });
      const rotated = await call(s.url, 'POST', `/api/v1/nodes/${k.node.id}/rotate-token`, { headers: s.op });
      await call(s.url, 'GET', '/api/v1/tenants', { headers: { authorization: 'Bearer wrong-token-attempt-123456' } });
      await call(s.url, 'POST', '/api/v1/heartbeat', { headers: { 'x-nebulagc-node-token': rotated.body.token } });
      await call(s.url, 'GET', '/api/v1/config/version', { headers: { 'x-nebulagc-cluster-token': k.clusterToken } });
      const log = lines.join('');
      assert.ok(lines.length > 5, 'requests were logged');
      for (const secret of [TEST_ADMIN_TOKEN, TEST_SECRET, k.admin.token, k.node.token, k.clusterToken, rotated.body.token, 'wrong-token-attempt-123456']) {
        assert.equal(log.includes(secret), false, `log leaks ${secret.slice(0, 12)}…`);
      }
      for (const line of lines) JSON.parse(line);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
