/**
 * Semi-synchronous writes (NEBULAGC_SYNC_REPLICAS) between real processes on 127.0.0.1: an
 * answered write is durable on a replica; strict mode answers 503 SYNC_TIMEOUT when no replica
 * holds it in time; degrade mode goes on and comes back; a forgotten replica leaves the sync set;
 * and no acknowledged write is lost when the master is killed with -9 and the most caught-up
 * replica is promoted. Every test bounds its time, kills its processes and removes its directory.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';
import { health, metric, tenantNames } from '../helpers/probes.js';
import { WriteLoad } from '../helpers/write-load.js';

const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
const roots: { remove(): void }[] = [];
const nodes: ServerProcess[] = [];
after(async () => {
  for (const n of nodes) if (n.child.signalCode === null && n.child.exitCode === null) n.child.kill('SIGCONT');
  await Promise.all(nodes.map((n) => n.kill9()));
  for (const r of roots) r.remove();
});

const write = (n: ServerProcess, name: string) => call(n.url, 'POST', '/api/v1/tenants', { headers: op, json: { name } });

async function cluster(label: string, replicas: string[], sync: Record<string, string>): Promise<{ root: string; master: ServerProcess; replicas: ServerProcess[] }> {
  const dir = clusterDir(label);
  roots.push(dir);
  const master = await startNode('n1', dir.root, { NEBULAGC_HA_MODE: 'master', ...sync });
  nodes.push(master);
  const rs: ServerProcess[] = [];
  for (const name of replicas) {
    const r = await startNode(name, dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, ...sync });
    nodes.push(r);
    rs.push(r);
  }
  for (const r of rs) assert.ok(await waitUntil(async () => (await health(r)).ha_state === 'replica.following', 20_000), r.output());
  assert.ok(await waitUntil(async () => (await health(master)).replicas === rs.length, 10_000));
  return { root: dir.root, master, replicas: rs };
}

describe('semi-synchronous writes', { timeout: 240_000 }, () => {
  it('strict: an answered write is durable on a replica; with none holding it in time the answer is 503 SYNC_TIMEOUT', async () => {
    const { master, replicas } = await cluster('sync-strict', ['r1'], { NEBULAGC_SYNC_REPLICAS: '1', NEBULAGC_SYNC_TIMEOUT_MS: '1000' });
    const [r1] = replicas as [ServerProcess];
    for (let i = 0; i < 20; i++) {
      const w = await write(master, `s-${i}`);
      assert.equal(w.status, 201, JSON.stringify(w.body));
      const txid = Number(w.headers.get('x-nebulagc-txid'));
      const durable = (await health(r1)).durable_position.txid as number;
      assert.ok(durable >= txid, `write ${i}: answered at txid ${txid}, the replica had only ${durable} on disk`);
    }
    assert.equal((await health(master)).sync.holding_head, 1);

    r1.child.kill('SIGSTOP');
    try {
      const started = Date.now();
      const w = await write(master, 'while-stopped');
      assert.equal(w.status, 503, JSON.stringify(w.body));
      assert.equal(w.body.code, 'SYNC_TIMEOUT');
      assert.equal(w.body.details.replicas_needed, 1);
      assert.equal(w.body.details.replicas_holding, 0);
      assert.ok(Date.now() - started >= 900, 'it waited for the timeout');
      assert.ok(tenantNames(master).has('while-stopped'), 'the write is committed on the master: "may or may not survive"');
    } finally {
      r1.child.kill('SIGCONT');
    }
    assert.ok(await waitUntil(async () => (await write(master, `after-${Date.now()}`)).status === 201, 10_000), 'writes are answered again once the replica is back');
    assert.ok((await metric(master, /^nebulagc_ha_sync_wait_seconds_count /)) >= 21);
  });

  it('degrade: a write not held in time is answered, writes go on without waiting, and sync returns when the replica catches up', async () => {
    const { master, replicas } = await cluster('sync-degrade', ['r1'], { NEBULAGC_SYNC_REPLICAS: '1', NEBULAGC_SYNC_TIMEOUT_MS: '800', NEBULAGC_SYNC_MODE: 'degrade' });
    const [r1] = replicas as [ServerProcess];
    assert.equal((await write(master, 'before')).status, 201);
    r1.child.kill('SIGSTOP');
    try {
      assert.equal((await write(master, 'degrading')).status, 201);
      assert.equal((await health(master)).sync.degraded, true);
      assert.equal(await metric(master, /^nebulagc_ha_sync_degraded /), 1);
      const started = Date.now();
      for (let i = 0; i < 5; i++) assert.equal((await write(master, `degraded-${i}`)).status, 201);
      assert.ok(Date.now() - started < 800 * 5, 'degraded writes do not each wait for the timeout');
      assert.match(master.output(), /synchronous replication degraded/);
    } finally {
      r1.child.kill('SIGCONT');
    }
    assert.ok(await waitUntil(async () => (await write(master, `back-${Date.now()}`)).status === 201 && (await health(master)).sync.degraded === false, 10_000));
    assert.equal(await metric(master, /^nebulagc_ha_sync_degraded /), 0);
    assert.match(master.output(), /synchronous replication restored/);
  });

  it('a forgotten replica leaves the sync set until its process restarts', async () => {
    const { master, replicas } = await cluster('sync-forget', ['r1', 'r2'], { NEBULAGC_SYNC_REPLICAS: '1', NEBULAGC_SYNC_TIMEOUT_MS: '800' });
    const [r1, r2] = replicas as [ServerProcess, ServerProcess];
    assert.equal((await call(master.url, 'DELETE', '/cluster/peers/r1', { headers: op })).status, 200);
    assert.ok(await waitUntil(async () => (await health(master)).replicas === 2, 10_000), 'r1 reconnected');
    r2.child.kill('SIGSTOP');
    try {
      const w = await write(master, 'only-r1-up');
      assert.equal(w.status, 503, 'r1 (forgotten, same process) does not count: nobody in the sync set holds the write');
      assert.equal(w.body.code, 'SYNC_TIMEOUT');
    } finally {
      r2.child.kill('SIGCONT');
    }
    assert.ok(await waitUntil(async () => (await write(master, `r2-back-${Date.now()}`)).status === 201, 10_000));
    await r1.stop();
    const r1b = await r1.restart();
    nodes.push(r1b);
    assert.ok(await waitUntil(async () => (await health(master)).replicas === 2, 15_000));
    r2.child.kill('SIGSTOP');
    try {
      assert.equal((await write(master, 'r1-restarted')).status, 201, 'the restarted r1 counts again');
    } finally {
      r2.child.kill('SIGCONT');
    }
  });

  it('no acknowledged write is lost when the master is killed with -9 and the most caught-up replica is promoted (3 rounds)', async () => {
    const sync = { NEBULAGC_SYNC_REPLICAS: '1', NEBULAGC_SYNC_TIMEOUT_MS: '2000' };
    const { root, master: n1, replicas } = await cluster('sync-loss', ['n2', 'n3'], sync);
    let members: ServerProcess[] = [n1, ...replicas];
    let master = n1;
    const load = new WriteLoad(members.map((n) => n.url), 'zl');
    load.start();
    const lostAfter: string[] = [];
    for (let round = 0; round < 3; round++) {
      const before = load.acks.length;
      assert.ok(await waitUntil(() => load.acks.length >= before + 40, 20_000), `round ${round}: writes flow`);
      await master.kill9();
      const survivors = members.filter((n) => n !== master);
      const positions = await Promise.all(survivors.map(async (n) => (await health(n)).position.txid as number));
      const best = survivors[positions.indexOf(Math.max(...positions))]!;
      const promoted = await call(best.url, 'POST', '/cluster/promote', { headers: op, json: { force: true } });
      assert.equal(promoted.status, 200, JSON.stringify(promoted.body));
      for (const other of survivors.filter((n) => n !== best)) {
        assert.equal((await call(other.url, 'POST', '/cluster/demote', { headers: op, json: { master_url: best.url } })).status, 200);
      }
      const names = tenantNames(best);
      lostAfter.push(...load.acks.filter((a) => !names.has(a.name)).map((a) => `round ${round}: ${a.name}`));
      const restarted = await startNode(master.name, root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: best.url, ...sync }, master.port);
      nodes.push(restarted);
      members = [...survivors, restarted];
      master = best;
      assert.ok(await waitUntil(async () => (await health(restarted)).ha_state === 'replica.following', 20_000), restarted.output().slice(-3000));
    }
    const acks = await load.stop();
    assert.deepEqual(lostAfter, [], 'every write acknowledged before a kill was on the promoted replica');
    const final = tenantNames(master);
    assert.deepEqual(acks.filter((a) => !final.has(a.name)).map((a) => a.name), []);
    assert.ok(acks.length >= 120);
  });
});
