/**
 * The election's rules and faults on a real etcd (127.0.0.1, Debian's etcd-server): partitions
 * cut with TCP gates that drop every byte (a master cut off from etcd, with and without
 * NEBULAGC_FAILSAFE; replicas cut off from their master), every etcd member killed and brought
 * back, the candidate rules (a lagging replica, a non-candidate), a split brain whose lone
 * writes end in quarantine, and a switchover through the coordinator. Bounded in time; every
 * process is killed and every directory removed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { masterOf, masterWatch, startAutoCluster, type AutoCluster, type CoordinatorSpec } from '../helpers/auto-cluster.js';
import { waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd, startEtcdCluster, type EtcdServer } from '../helpers/etcd.js';
import { health, isMaster, tenantNames } from '../helpers/probes.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';
import { WriteLoad } from '../helpers/write-load.js';

const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
const TTL_MS = 2000;
let etcd: EtcdServer;
let spec: CoordinatorSpec;
const clusters: AutoCluster[] = [];

before(async () => {
  etcd = await startEtcd();
  spec = { kind: 'etcd', endpoints: etcd.endpoint };
});
after(async () => {
  for (const c of clusters) await c.remove();
  await etcd?.stop();
});

async function cluster(label: string, opts: Parameters<typeof startAutoCluster>[2] = {}, coordinator: CoordinatorSpec = spec): Promise<AutoCluster> {
  const c = await startAutoCluster(label, coordinator, opts);
  clusters.push(c);
  return c;
}

const write = async (n: ServerProcess, name: string): Promise<number> => (await call(n.url, 'POST', '/api/v1/tenants', { headers: op, json: { name } })).status;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const state = async (n: ServerProcess): Promise<string> => (await health(n)).ha_state as string;
const logs = (c: AutoCluster): string => c.members.map((m) => `${m.name}:\n${m.output().slice(-2500)}`).join('\n---\n');

describe('elections on etcd: partitions, outages, candidates', { timeout: 600_000 }, () => {
  it('a master cut off from etcd but not from its replicas fences within half the TTL; a replica takes over; healed, the old master follows it', async (t) => {
    const c = await cluster('cutoff', { gateCoordinator: true });
    const master = (await masterOf(c.members))!;
    const others = c.members.filter((m) => m !== master);
    assert.equal(await write(master, 'before-cut'), 201);
    const cutAt = performance.now();
    c.coordinatorGates.get(master.name)!.blackhole();
    assert.ok(await waitUntil(async () => !(await isMaster(master)), 5000, 20), 'the cut-off master stops taking writes');
    const fencedMs = performance.now() - cutAt;
    assert.notEqual(await write(master, 'while-cut'), 201, 'the fenced master refuses writes');
    assert.ok(await waitUntil(async () => (await masterOf(others)) !== undefined, 15_000), `a replica took over:\n${logs(c)}`);
    const next = (await masterOf(others))!;
    t.diagnostic(`cut -> fenced: ${Math.round(fencedMs)} ms (TTL ${TTL_MS} ms); cut -> new master: ${Math.round(performance.now() - cutAt)} ms`);
    assert.ok(fencedMs < TTL_MS, `fenced before the lease could expire (${Math.round(fencedMs)} ms)`);
    assert.equal(await write(next, 'after-cut'), 201);
    c.coordinatorGates.get(master.name)!.heal();
    assert.ok(await waitUntil(async () => (await state(master)) === 'replica.following', 20_000), master.output().slice(-3000));
    assert.ok(await waitUntil(() => tenantNames(master).has('after-cut'), 10_000));
    assert.ok(!tenantNames(next).has('while-cut'));
  });

  it('NEBULAGC_FAILSAFE: cut off from etcd, the master keeps writing while every replica answers, and fences once one does not', async (t) => {
    const c = await cluster('failsafe', { gateCoordinator: true, env: { NEBULAGC_FAILSAFE: 'true' } });
    const master = (await masterOf(c.members))!;
    const [a, b] = c.members.filter((m) => m !== master) as [ServerProcess, ServerProcess];
    c.coordinatorGates.get(master.name)!.blackhole();
    // Past the TTL etcd has dropped the master's lease: the replicas, which still reach etcd, see a free lock.
    let refused = 0;
    let written = 0;
    const until = performance.now() + 3 * TTL_MS;
    while (performance.now() < until) {
      if ((await write(master, `fs-${written + refused}`)) === 201) written++;
      else refused++;
      await sleep(50);
    }
    t.diagnostic(`failsafe: ${written} writes taken, ${refused} refused over ${3 * TTL_MS} ms without etcd`);
    assert.equal(refused, 0, `every write was taken:\n${master.output().slice(-3000)}`);
    const h = await health(master);
    assert.equal(h.election.failsafe_active, true);
    assert.equal(h.election.coordinator_reachable, false);
    const quiet = (n: ServerProcess): string => n.output().split('\n').filter((l) => !l.includes('"msg":"request"')).slice(-40).join('\n');
    assert.equal(await isMaster(a), false, quiet(a));
    assert.equal(await isMaster(b), false, quiet(b));
    assert.match(a.output(), /the master is alive in failsafe mode/, 'a replica saw the free lock and stood back');
    a.child.kill('SIGSTOP');
    try {
      const stoppedAt = performance.now();
      assert.ok(await waitUntil(async () => !(await isMaster(master)), 5000, 20), 'a silent replica fences the master');
      t.diagnostic(`replica stopped -> master fenced: ${Math.round(performance.now() - stoppedAt)} ms`);
      assert.ok(await waitUntil(async () => isMaster(b), 15_000), `the replica that reaches etcd takes over:\n${logs(c)}`);
      assert.equal(await write(b, 'after-failsafe'), 201);
    } finally {
      a.child.kill('SIGCONT');
    }
    c.coordinatorGates.get(master.name)!.heal();
    assert.ok(await waitUntil(async () => (await state(master)) === 'replica.following', 20_000), master.output().slice(-3000));
    const names = tenantNames(b);
    for (let i = 0; i < written; i++) assert.ok(names.has(`fs-${i}`), `fs-${i}, written in failsafe, is on the new master`);
  });

  it('replicas cut off from the master but not from etcd hold no election while the lock is held', async () => {
    const c = await cluster('no-stream', { gateApi: true });
    const master = (await masterOf(c.members))!;
    const others = c.members.filter((m) => m !== master);
    c.apiGates.get(master.name)!.blackhole();
    const watch = masterWatch(() => c.members);
    await sleep(3 * TTL_MS);
    const { most } = await watch.stop();
    assert.equal(most, 1, 'never two masters');
    assert.ok(await isMaster(master), 'the master still serves');
    for (const r of others) assert.ok((await state(r)).startsWith('replica'), `${r.name} stayed a replica`);
    c.apiGates.get(master.name)!.heal();
    assert.equal(await write(master, 'after-heal'), 201);
    for (const r of others) assert.ok(await waitUntil(() => tenantNames(r).has('after-heal'), 15_000), `${r.name} follows again`);
  });

  it('every etcd member killed: the master fences, no node runs; brought back, one master serves and no acknowledged write is lost', async (t) => {
    const e = await startEtcdCluster(3);
    try {
      const c = await cluster('etcd-down', { env: { NEBULAGC_SYNC_REPLICAS: '1', NEBULAGC_SYNC_TIMEOUT_MS: '3000' } }, { kind: 'etcd', endpoints: e.endpoints });
      const watch = masterWatch(() => c.members);
      const load = new WriteLoad(c.members.map((m) => m.url), 'down');
      load.start();
      assert.ok(await waitUntil(() => load.acks.length >= 30, 20_000));
      await Promise.all(e.members.map((m) => m.kill9()));
      const downAt = performance.now();
      assert.ok(await waitUntil(async () => (await masterOf(c.members)) === undefined, 5000, 20), 'the master fenced');
      t.diagnostic(`etcd down -> master fenced: ${Math.round(performance.now() - downAt)} ms`);
      await sleep(2 * TTL_MS);
      assert.equal(await masterOf(c.members), undefined, 'no master while etcd is down');
      const acksWhileDown = load.acks.filter((a) => a.at > downAt + TTL_MS).length;
      assert.equal(acksWhileDown, 0, 'no write was acknowledged while etcd was down');
      for (const m of e.members) await m.start();
      const backAt = performance.now();
      assert.ok(await waitUntil(async () => (await masterOf(c.members)) !== undefined, 30_000), `a master again:\n${logs(c)}\n${e.output()}`);
      const before = load.acks.length;
      assert.ok(await waitUntil(() => load.acks.length >= before + 20, 20_000), 'writes flow again');
      t.diagnostic(`etcd back -> a master serving: ${Math.round(performance.now() - backAt)} ms`);
      const acks = await load.stop();
      assert.equal((await watch.stop()).most, 1, 'never two masters at once');
      const master = (await masterOf(c.members))!;
      const names = tenantNames(master);
      assert.deepEqual(acks.filter((a) => !names.has(a.name)).map((a) => a.name), [], 'every acknowledged write is on the master');
    } finally {
      await e.stop();
    }
  });

  it('a lagging replica is not promoted while a caught-up one is reachable', async () => {
    const c = await cluster('lagging');
    const master = (await masterOf(c.members))!;
    const [fresh, lagging] = c.members.filter((m) => m !== master) as [ServerProcess, ServerProcess];
    await lagging.kill9();
    for (let i = 0; i < 20; i++) assert.equal(await write(master, `lag-${i}`), 201);
    assert.ok(await waitUntil(() => tenantNames(fresh).has('lag-19'), 10_000));
    await master.kill9();
    const back = await c.restart(lagging);
    assert.ok(!tenantNames(back).has('lag-0'), 'the restarted replica lags');
    assert.ok(await waitUntil(async () => (await masterOf([fresh, back])) !== undefined, 15_000), logs(c));
    assert.equal((await masterOf([fresh, back]))!.name, fresh.name, 'the caught-up replica won');
    assert.match(back.output(), /not running|another node holds the lock|following/);
    assert.ok(await waitUntil(() => tenantNames(back).has('lag-19'), 15_000), 'the lagging one follows and catches up');
  });

  it('a non-candidate (NEBULAGC_CANDIDATE=false) is never promoted, even when it is the last node alive', async () => {
    const c = await cluster('non-candidate', { perNode: { n3: { NEBULAGC_CANDIDATE: 'false' } } });
    const n3 = c.members.find((m) => m.name === 'n3')!;
    assert.equal((await health(n3)).election.candidate, false);
    const first = (await masterOf(c.members))!;
    assert.notEqual(first.name, 'n3');
    await first.kill9();
    const rest = c.members.filter((m) => m !== first);
    assert.ok(await waitUntil(async () => (await masterOf(rest)) !== undefined, 15_000), logs(c));
    const second = (await masterOf(rest))!;
    assert.notEqual(second.name, 'n3', 'the candidate took over');
    await second.kill9();
    await sleep(3 * TTL_MS);
    assert.equal(await isMaster(n3), false, 'the non-candidate did not run');
    assert.ok((await state(n3)).startsWith('replica'));
  });

  it('split brain: a master stopped past the TTL with writes its replicas never got takes no write on resume, and those writes go to quarantine', async () => {
    const c = await cluster('split', { gateApi: true });
    const master = (await masterOf(c.members))!;
    const others = c.members.filter((m) => m !== master);
    assert.equal(await write(master, 'shared'), 201);
    for (const r of others) assert.ok(await waitUntil(() => tenantNames(r).has('shared'), 10_000));
    // Its replicas stop hearing it; the writes it takes now are its alone (asynchronous replication).
    c.apiGates.get(master.name)!.blackhole();
    for (let i = 0; i < 3; i++) assert.equal(await write(master, `alone-${i}`), 201);
    master.child.kill('SIGSTOP');
    let resumed = false;
    try {
      assert.ok(await waitUntil(async () => (await masterOf(others)) !== undefined, 15_000), logs(c));
      const pending = write(master, 'during-stop');
      await sleep(200);
      master.child.kill('SIGCONT');
      resumed = true;
      assert.notEqual(await pending, 201, 'the resumed master refused the write');
    } finally {
      if (!resumed) master.child.kill('SIGCONT');
    }
    c.apiGates.get(master.name)!.heal();
    assert.ok(await waitUntil(async () => (await state(master)) === 'replica.following', 30_000), master.output().slice(-4000));
    // It follows from its own position first; the new master then finds it off its history.
    assert.ok(await waitUntil(async () => (await health(master)).quarantined_transactions >= 3, 20_000), `its lone writes are in quarantine: ${JSON.stringify(await health(master))}`);
    assert.ok(await waitUntil(async () => (await state(master)) === 'replica.following', 20_000));
    const next = (await masterOf(others))!;
    assert.ok(!tenantNames(next).has('alone-0'));
    assert.ok(!tenantNames(master).has('alone-0'), 'the resynced copy is the new master’s');
  });

  it('POST /cluster/switchover passes the lock to the named replica through a handover note; the third node does not run', async (t) => {
    const c = await cluster('switchover');
    const master = (await masterOf(c.members))!;
    const [target, third] = c.members.filter((m) => m !== master).sort((x, y) => y.name.localeCompare(x.name)) as [ServerProcess, ServerProcess];
    const load = new WriteLoad(c.members.map((m) => m.url), 'sw');
    load.start();
    assert.ok(await waitUntil(() => load.acks.length >= 30, 10_000));
    const started = performance.now();
    const mark = third.output().length;
    const r = await call(master.url, 'POST', '/cluster/switchover', { headers: op, json: { to: target.name } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.node_id, target.name);
    const before = load.acks.length;
    assert.ok(await waitUntil(() => load.acks.length >= before + 20, 10_000));
    const acks = await load.stop();
    const during = acks.filter((a) => a.at > started - 1000);
    let gap = 0;
    for (let i = 1; i < during.length; i++) gap = Math.max(gap, during[i]!.at - during[i - 1]!.at);
    t.diagnostic(`switchover through etcd: longest gap between acknowledged writes ${Math.round(gap)} ms`);
    assert.ok(await isMaster(target));
    assert.equal(await isMaster(third), false);
    assert.doesNotMatch(third.output().slice(mark), /running for master/, 'the third node stood back');
    assert.ok(await waitUntil(async () => (await health(master)).ha_state === 'replica.following', 10_000));
    assert.ok(await waitUntil(async () => (await health(third)).master_url === target.url, 10_000), 'the third node follows the new master');
    const names = tenantNames(target);
    assert.deepEqual(acks.filter((a) => !names.has(a.name)).map((a) => a.name), [], 'no acknowledged write lost');
  });
});
