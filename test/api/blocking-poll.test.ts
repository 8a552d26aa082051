import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { seed, type Seeded } from '../helpers/fixtures.js';
import { openStore } from '../../server/src/db/open-store.js';
import { updateNode } from '../../server/src/domain/nodes.js';
import { call, startTestServer, TEST_ADMIN_TOKEN, TEST_SECRET, type TestServer } from '../helpers/server.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** GET config/version, timed; `signal` lets a test hang up. */
async function poll(base: string, headers: Record<string, string>, query: string, signal?: AbortSignal) {
  const started = performance.now();
  const res = await fetch(`${base}/api/v1/config/version${query}`, { headers, signal });
  const body = (await res.json()) as Record<string, any>;
  return { status: res.status, body, index: res.headers.get('x-nebulagc-index'), ms: performance.now() - started };
}

async function held(base: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = /^nebulagc_blocking_polls_held (\d+)/m.exec(text);
  assert.ok(m, 'the held-polls gauge is exported');
  return Number(m[1]);
}

/** Consul-style blocking polls of a node's rendered-config version. */
describe('blocking config polls', () => {
  let s: TestServer;
  let k: Seeded;
  const current = async (headers = k.node.headers): Promise<number> => (await poll(s.url, headers, '')).body.version;
  const setMtu = async (id: string, mtu: number): Promise<void> => {
    const r = await call(s.url, 'PATCH', `/api/v1/nodes/${id}`, { headers: s.op, json: { mtu } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  };

  before(async () => {
    s = await startTestServer();
    k = await seed(s);
  });
  after(() => s.stop());

  it('answers at once when the index differs, with X-NebulaGC-Index', async () => {
    const v = await current();
    for (const index of [0, v - 1, v + 1000]) {
      const r = await poll(s.url, k.node.headers, `?index=${index}&wait=5m`);
      assert.equal(r.status, 200);
      assert.equal(r.body.version, v);
      assert.equal(r.index, String(v));
    }
  });

  it('holds until the node’s version moves, and answers with the new one', async () => {
    const v = await current();
    const pending = poll(s.url, k.node.headers, `?index=${v}&wait=30s`);
    assert.ok(await waitUntil(async () => (await held(s.url)) === 1, 5_000), 'the poll is held');
    await setMtu(k.node.id, 1350);
    const r = await pending;
    assert.equal(r.status, 200);
    assert.ok(r.body.version > v);
    assert.equal(r.index, String(r.body.version));
    assert.ok(r.ms < 30_000, `answered by the change, not the wait (${r.ms} ms)`);
    assert.equal(await held(s.url), 0);
  });

  it('wakes a held poll for a change another process commits (the CLI against a live database)', async () => {
    const v = await current();
    const pending = poll(s.url, k.node.headers, `?index=${v}&wait=30s`);
    assert.ok(await waitUntil(async () => (await held(s.url)) === 1, 5_000), 'the poll is held');
    // A connection of its own, as the CLI has: the server's commit hooks never hear of it.
    const other = openStore({ dbPath: s.dbPath, synchronous: 'NORMAL', secret: TEST_SECRET });
    try {
      updateNode(other.store, k.clusterId, k.node.id, { mtu: 1380 });
    } finally {
      other.close();
    }
    const r = await pending;
    assert.equal(r.status, 200);
    assert.ok(r.body.version > v, 'answered with the new version');
    assert.ok(r.ms < 30_000, `answered by the change, not the wait (${r.ms} ms)`);
  });

  it('a change that does not touch the node leaves it held until the wait runs out', async () => {
    const v = await current();
    const pending = poll(s.url, k.node.headers, `?index=${v}&wait=1s`);
    assert.ok(await waitUntil(async () => (await held(s.url)) === 1, 5_000));
    await setMtu(k.admin.id, 1360);
    const r = await pending;
    assert.equal(r.body.version, v);
    assert.ok(r.ms >= 1000, `held for the whole wait (${r.ms} ms)`);
  });

  it('times out after a short wait and answers the same version', async () => {
    const v = await current();
    const r = await poll(s.url, k.node.headers, `?index=${v}&wait=300ms`);
    assert.equal(r.status, 200);
    assert.equal(r.body.version, v);
    assert.equal(r.index, String(v));
    assert.ok(r.ms >= 300, `held at least the wait (${r.ms} ms)`);
  });

  it('many pollers of many nodes: each is woken by its own change only', async () => {
    const v = await current();
    const va = await current(k.admin.headers);
    const node = [0, 1, 2].map(() => poll(s.url, k.node.headers, `?index=${v}&wait=20s`));
    const admin = poll(s.url, k.admin.headers, `?index=${va}&wait=700ms`);
    assert.ok(await waitUntil(async () => (await held(s.url)) === 4, 5_000));
    await setMtu(k.node.id, 1370);
    for (const r of await Promise.all(node)) assert.ok(r.body.version > v);
    assert.equal((await admin).body.version, va);
  });

  it('forgets a poller that hangs up', async () => {
    const v = await current();
    const hangUp = new AbortController();
    const pending = poll(s.url, k.node.headers, `?index=${v}&wait=60s`, hangUp.signal).catch((err: Error) => err);
    assert.ok(await waitUntil(async () => (await held(s.url)) === 1, 5_000));
    hangUp.abort();
    assert.ok((await pending) instanceof Error);
    assert.ok(await waitUntil(async () => (await held(s.url)) === 0, 5_000), 'the waiter is cleaned up');
  });

  it('refuses a bad index or wait with 400 VALIDATION_FAILED', async () => {
    for (const q of ['?index=-1', '?index=abc', '?index=1&wait=soon', '?index=1&wait=-5s', '?index=1.5']) {
      const r = await poll(s.url, k.node.headers, q);
      assert.equal(r.status, 400, q);
      assert.equal(r.body.code, 'VALIDATION_FAILED', q);
    }
  });

  it('caps the wait with NEBULAGC_POLL_MAX_WAIT_MS', async () => {
    const capped = await startTestServer({ NEBULAGC_POLL_MAX_WAIT_MS: '200' });
    try {
      const c = await seed(capped);
      const v = (await poll(capped.url, c.node.headers, '')).body.version;
      const r = await poll(capped.url, c.node.headers, `?index=${v}&wait=10m`);
      assert.equal(r.body.version, v);
      assert.ok(r.ms < 10_000, `the 10 minute wait was capped (${r.ms} ms)`);
    } finally {
      await capped.stop();
    }
  });

  it('answers held polls when the server closes', async () => {
    const closing = await startTestServer();
    const c = await seed(closing);
    const v = (await poll(closing.url, c.node.headers, '')).body.version;
    const pending = poll(closing.url, c.node.headers, `?index=${v}&wait=60s`);
    assert.ok(await waitUntil(async () => (await held(closing.url)) === 1, 5_000));
    await closing.stop();
    const r = await pending;
    assert.equal(r.status, 200);
    assert.ok(r.ms < 60_000);
  });
});

describe('blocking polls on a replica', () => {
  const dir = clusterDir('blocking-poll');
  const nodes: ServerProcess[] = [];
  after(async () => {
    for (const n of nodes) await n.stop().catch(() => undefined);
    dir.remove();
  });

  it('a poll held on the replica is woken by a write on the master', async () => {
    const master = await startNode('master', dir.root, { NEBULAGC_HA_MODE: 'master', NEBULAGC_DB_SYNCHRONOUS: 'NORMAL' });
    nodes.push(master);
    const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
    const t = await call(master.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 't' } });
    const c = await call(master.url, 'POST', '/api/v1/clusters', { headers: op, json: { tenant_id: t.body.id, name: 'c' } });
    const n = await call(master.url, 'POST', '/api/v1/nodes', {
      headers: op,
      json: { cluster_id: c.body.cluster.id, name: 'n', overlay_ip: '10.42.0.5' },
    });
    assert.equal(n.status, 201, JSON.stringify(n.body));
    const headers = { 'x-nebulagc-node-token': n.body.token as string };
    const v = (await poll(master.url, headers, '')).body.version as number;

    const replica = await startNode('replica', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url });
    nodes.push(replica);
    assert.ok(
      await waitUntil(async () => {
        const r = await call(replica.url, 'GET', '/api/v1/config/version', { headers });
        return r.status === 200 && r.body.version === v;
      }, 20_000),
      `the replica never served version ${v}:\n${replica.output().slice(-2000)}`,
    );

    const pending = poll(replica.url, headers, `?index=${v}&wait=60s`);
    assert.ok(await waitUntil(async () => (await held(replica.url)) === 1, 5_000), 'held on the replica');
    await sleep(50);
    const patch = await call(master.url, 'PATCH', `/api/v1/nodes/${n.body.node.id}`, { headers: op, json: { mtu: 1420 } });
    assert.equal(patch.status, 200);
    const r = await pending;
    assert.equal(r.status, 200);
    assert.ok(r.body.version > v, JSON.stringify(r.body));
    assert.ok(r.ms < 60_000, `woken by the applied write (${r.ms} ms)`);
    const onMaster = (await poll(master.url, headers, '')).body.version;
    assert.equal(r.body.version, onMaster);
  });
});
