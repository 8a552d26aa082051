import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

const metric = (text: string, name: string): number => {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `metric ${name} present`);
  return Number(line.split(' ')[1]);
};

describe('heartbeats', () => {
  let s: TestServer;
  let clusterId: string;
  const nodes: { id: string; headers: Record<string, string> }[] = [];
  before(async () => {
    // A long flush interval, so the test decides when the flush happens (on shutdown or by timer).
    s = await startTestServer({ NEBULAGC_HEARTBEAT_FLUSH_MS: '600000' });
    const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'hb' } });
    const c = await call(s.url, 'POST', '/api/v1/clusters', { headers: s.op, json: { tenant_id: t.body.id, name: 'hb' } });
    clusterId = c.body.cluster.id;
    for (let i = 0; i < 100; i++) {
      const n = await call(s.url, 'POST', '/api/v1/nodes', { headers: s.op, json: { cluster_id: clusterId, name: `n${i}` } });
      nodes.push({ id: n.body.node.id, headers: { 'x-nebulagc-node-token': n.body.token } });
    }
  });
  after(() => s.stop());

  it('a storm of 2,000 heartbeats from 100 nodes costs one write transaction', async () => {
    const commitsBefore = s.server.store.writer.commits;
    for (let round = 0; round < 20; round++) {
      const replies = await Promise.all(nodes.map((n) => call(s.url, 'POST', '/api/v1/heartbeat', { headers: n.headers })));
      for (const r of replies) assert.equal(r.status, 202);
    }
    assert.equal(s.server.store.writer.commits, commitsBefore, 'no write per heartbeat');
    assert.equal(s.server.heartbeats.pendingCount, 100);

    // Reads already show the pending beat.
    const seen = await call(s.url, 'GET', `/api/v1/nodes/${nodes[0]!.id}`, { headers: s.op });
    assert.ok(seen.body.last_seen_at, 'last_seen_at visible before the flush');

    const updated = s.server.heartbeats.flush();
    assert.equal(updated, 100);
    assert.equal(s.server.store.writer.commits, commitsBefore + 1, 'one transaction for the whole storm');
    const db = new Database(s.dbPath, { readonly: true });
    const stale = db.prepare('SELECT count(*) AS n FROM nodes WHERE cluster_id = ? AND last_seen_at IS NULL').get(clusterId) as { n: number };
    db.close();
    assert.equal(stale.n, 0);

    const text = await (await fetch(`${s.url}/metrics`)).text();
    assert.equal(metric(text, 'nebulagc_heartbeats_received_total'), 2000);
    assert.equal(metric(text, 'nebulagc_heartbeat_flushes_total'), 1);
    assert.equal(metric(text, 'nebulagc_heartbeats_pending'), 0);
  });

  it('only node tokens may send heartbeats', async () => {
    const r = await call(s.url, 'POST', '/api/v1/heartbeat', { headers: s.op });
    assert.equal(r.status, 403);
  });
});

describe('heartbeat flush timer', () => {
  it('flushes on its interval without any request', async () => {
    const s = await startTestServer({ NEBULAGC_HEARTBEAT_FLUSH_MS: '50' });
    try {
      const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: 'timer' } });
      const c = await call(s.url, 'POST', '/api/v1/clusters', { headers: s.op, json: { tenant_id: t.body.id, name: 'timer' } });
      const n = await call(s.url, 'POST', '/api/v1/nodes', { headers: s.op, json: { cluster_id: c.body.cluster.id, name: 'n' } });
      await call(s.url, 'POST', '/api/v1/heartbeat', { headers: { 'x-nebulagc-node-token': n.body.token } });
      const deadline = Date.now() + 5000;
      while (s.server.heartbeats.stats.flushes === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(s.server.heartbeats.stats.flushes, 1);
      assert.equal(s.server.heartbeats.pendingCount, 0);
    } finally {
      await s.stop();
    }
  });
});
