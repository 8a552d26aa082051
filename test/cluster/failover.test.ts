/**
 * Automatic failover (NEBULAGC_HA_MODE=auto) through a real etcd on 127.0.0.1: three nodes elect
 * a master; kill -9 of the master under a write load hands the role to a replica with no
 * acknowledged write lost (NEBULAGC_SYNC_REPLICAS=1); a master stopped past the lock's TTL takes
 * no write when it resumes and rejoins as a replica; SIGTERM hands the lock over at once. Every
 * test bounds its time, kills its processes and removes its directories.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd, type EtcdServer } from '../helpers/etcd.js';
import { health, isMaster, tenantNames } from '../helpers/probes.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';
import { WriteLoad } from '../helpers/write-load.js';

const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
const nodes: ServerProcess[] = [];
const roots: { remove(): void }[] = [];
let etcd: EtcdServer;

before(async () => {
  etcd = await startEtcd();
});
after(async () => {
  for (const n of nodes) if (n.child.exitCode === null && n.child.signalCode === null) n.child.kill('SIGCONT');
  await Promise.all(nodes.map((n) => n.kill9()));
  await etcd?.stop();
  for (const r of roots) r.remove();
});

async function autoCluster(label: string, extra: Record<string, string> = {}): Promise<{ root: string; env: Record<string, string>; members: ServerProcess[] }> {
  const dir = clusterDir(label);
  roots.push(dir);
  const env = { NEBULAGC_HA_MODE: 'auto', NEBULAGC_ETCD_ENDPOINTS: etcd.endpoint, NEBULAGC_CLUSTER_NAME: `test/${label}`, NEBULAGC_LOCK_TTL_S: '2', ...extra };
  const members = await Promise.all(['n1', 'n2', 'n3'].map((name) => startNode(name, dir.root, env)));
  nodes.push(...members);
  assert.ok(
    await waitUntil(async () => {
      const states = await Promise.all(members.map(async (m) => (await health(m)).ha_state as string));
      return states.filter((s) => s === 'master.serving').length === 1 && states.filter((s) => s === 'replica.following').length === 2;
    }, 30_000),
    `one master and two following replicas:\n${members.map((m) => m.output().slice(-1500)).join('\n---\n')}`,
  );
  const views = await Promise.all(members.map(async (m) => (await health(m)).election));
  const holders = new Set(views.map((v) => v.holder?.node_id));
  assert.equal(holders.size, 1, `every node names the same holder: ${JSON.stringify(views)}`);
  assert.equal(views.filter((v) => v.lock_held).length, 1);
  return { root: dir.root, env, members };
}

const masterOf = async (members: ServerProcess[]): Promise<ServerProcess | undefined> => {
  for (const m of members) if (m.child.exitCode === null && m.child.signalCode === null && (await isMaster(m).catch(() => false))) return m;
  return undefined;
};

describe('automatic failover on etcd', { timeout: 300_000 }, () => {
  it('kill -9 of the master under a write load: a replica takes over, no acknowledged write is lost, the old master rejoins', async (t) => {
    const { root, env, members } = await autoCluster('crash', { NEBULAGC_SYNC_REPLICAS: '1', NEBULAGC_SYNC_TIMEOUT_MS: '3000' });
    let live = [...members];
    const load = new WriteLoad(members.map((m) => m.url), 'fo');
    load.start();
    const times: number[] = [];
    for (let round = 0; round < 3; round++) {
      const master = (await masterOf(live))!;
      assert.ok(master, `round ${round}: a master`);
      const before = load.acks.length;
      assert.ok(await waitUntil(() => load.acks.length >= before + 30, 20_000), `round ${round}: writes flow`);
      const killedAt = performance.now();
      await master.kill9();
      live = live.filter((m) => m !== master);
      assert.ok(await waitUntil(() => load.acks.some((a) => a.at > killedAt && a.origin !== master.url), 20_000), `round ${round}: writes resume on a new master`);
      times.push(load.acks.find((a) => a.at > killedAt && a.origin !== master.url)!.at - killedAt);
      const next = (await masterOf(live))!;
      const names = tenantNames(next);
      assert.deepEqual(load.acks.filter((a) => !names.has(a.name)).map((a) => a.name), [], `round ${round}: the new master holds every acknowledged write`);
      const back = await startNode(master.name, root, env, master.port);
      nodes.push(back);
      live.push(back);
      assert.ok(await waitUntil(async () => (await health(back)).ha_state === 'replica.following', 20_000), back.output().slice(-3000));
    }
    const acks = await load.stop();
    t.diagnostic(`kill -9 -> first write on the new master, ms: ${times.map((x) => Math.round(x)).join(', ')}; ${acks.length} writes acknowledged`);
    const master = (await masterOf(live))!;
    const head = (await health(master)).position.txid as number;
    for (const m of live) assert.ok(await waitUntil(async () => (await health(m)).position?.txid === head, 15_000), `${m.name} catches up`);
    for (const m of live) {
      const names = tenantNames(m);
      assert.deepEqual(acks.filter((a) => !names.has(a.name)).map((a) => a.name), [], `${m.name} holds every acknowledged write`);
    }
  });

  it('a master stopped past the TTL takes no write when it resumes, and rejoins as a replica', async () => {
    const { members } = await autoCluster('stop');
    const master = (await masterOf(members))!;
    const others = members.filter((m) => m !== master);
    assert.equal((await call(master.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'before-stop' } })).status, 201);
    master.child.kill('SIGSTOP');
    let resumed = false;
    try {
      assert.ok(await waitUntil(async () => (await masterOf(others)) !== undefined, 15_000), 'a replica took over');
      // A write sent while it is stopped waits in its socket, and is the first thing it sees.
      const pending = call(master.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'during-stop' } });
      await new Promise((r) => setTimeout(r, 200));
      master.child.kill('SIGCONT');
      resumed = true;
      const w = await pending;
      assert.equal(w.status, 503, `the resumed master refused the write: ${JSON.stringify(w.body)}`);
    } finally {
      if (!resumed) master.child.kill('SIGCONT');
    }
    assert.ok(await waitUntil(async () => (await health(master)).ha_state === 'replica.following', 20_000), master.output().slice(-3000));
    const next = (await masterOf(others))!;
    assert.ok(!tenantNames(next).has('during-stop'));
    assert.ok(tenantNames(next).has('before-stop'));
  });

  it('SIGTERM of the master hands the lock over at once', async (t) => {
    const { members } = await autoCluster('term');
    const master = (await masterOf(members))!;
    const others = members.filter((m) => m !== master);
    const started = performance.now();
    await master.stop('SIGTERM');
    assert.ok(await waitUntil(async () => (await masterOf(others)) !== undefined, 10_000, 20));
    const ms = performance.now() - started;
    t.diagnostic(`SIGTERM -> a new master answering /health/master 200: ${Math.round(ms)} ms`);
    assert.match(master.output(), /handing the lock over/);
    assert.equal((await call((await masterOf(others))!.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'after-term' } })).status, 201);
  });
});
