/**
 * Switchover write gap: a master and two replicas (real processes), a client writing tenants
 * one after another and following 307s, and BENCH_SWITCHOVER_ROUNDS switchovers (default 20),
 * each to the next node in turn. The gap of a round is the time from the last write the old
 * master acknowledged to the first the new one did, as the client saw them. The baseline, in
 * the same run, is the client's ordinary time between two acknowledged writes.
 * BENCH_COORDINATOR=etcd runs the nodes in auto mode on a real etcd: each switchover then passes
 * the lock through the coordinator (a handover note naming the target).
 */
import { masterOf, startAutoCluster } from '../helpers/auto-cluster.js';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd } from '../helpers/etcd.js';
import { tenantNames } from '../helpers/probes.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';
import { WriteLoad } from '../helpers/write-load.js';
import { isEntryPoint } from './entry.js';
import { fmt, printTable, quantile } from './harness.js';

const ROUNDS = Number(process.env.BENCH_SWITCHOVER_ROUNDS ?? 20);
const ON_ETCD = process.env.BENCH_COORDINATOR === 'etcd';
const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

/** Three nodes: a static master and two replicas, or (on etcd) three in auto mode. */
async function threeNodes(): Promise<{ nodes: ServerProcess[]; master: ServerProcess; close(): Promise<void> }> {
  const base = { NEBULAGC_LOG_LEVEL: 'warn' };
  if (ON_ETCD) {
    const etcd = await startEtcd();
    const c = await startAutoCluster('bench-switchover', { kind: 'etcd', endpoints: etcd.endpoint }, { env: base });
    return {
      nodes: c.members,
      master: (await masterOf(c.members))!,
      async close() {
        await c.remove();
        await etcd.stop();
      },
    };
  }
  const dir = clusterDir('bench-switchover');
  const nodes: ServerProcess[] = [];
  const close = async (): Promise<void> => {
    await Promise.all(nodes.map((n) => n.kill9()));
    dir.remove();
  };
  try {
    const n1 = await startNode('n1', dir.root, { ...base, NEBULAGC_HA_MODE: 'master' });
    nodes.push(n1);
    for (const name of ['n2', 'n3']) nodes.push(await startNode(name, dir.root, { ...base, NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: n1.url }));
    for (const n of nodes.slice(1)) await waitUntil(async () => (await call(n.url, 'GET', '/health')).body.ha_state === 'replica.following', 20_000);
    return { nodes, master: n1, close };
  } catch (err) {
    await close();
    throw err;
  }
}

export async function runSwitchoverBench(): Promise<boolean> {
  const cluster = await threeNodes();
  const { nodes } = cluster;
  try {
    const load = new WriteLoad(nodes.map((n) => n.url), 'bench', 1);
    load.start();
    await waitUntil(() => load.acks.length >= 200, 30_000);
    const gaps: number[] = [];
    const calls: number[] = [];
    let master = cluster.master;
    for (let round = 0; round < ROUNDS; round++) {
      const target = nodes[(nodes.indexOf(master) + 1) % nodes.length]!;
      await waitUntil(() => load.acks.length > 0 && load.acks[load.acks.length - 1]!.origin === master.url, 10_000);
      const before = load.acks.length;
      const started = performance.now();
      const res = await call(master.url, 'POST', '/cluster/switchover', { headers: op, json: { to: target.name } });
      calls.push(performance.now() - started);
      if (res.status !== 200) throw new Error(`round ${round}: switchover answered ${res.status} ${JSON.stringify(res.body)}`);
      await waitUntil(() => load.acks.slice(before).some((a) => a.origin === target.url), 10_000, 1);
      const acks = load.acks;
      let firstNew = acks.findIndex((a, i) => i >= before && a.origin === target.url);
      if (firstNew < 0) firstNew = acks.length - 1;
      gaps.push(acks[firstNew]!.at - acks[firstNew - 1]!.at);
      master = target;
      await waitUntil(() => load.acks.length >= firstNew + 100, 10_000);
    }
    const acks = await load.stop();
    const steady: number[] = [];
    for (let i = 1; i < acks.length; i++) if (acks[i]!.origin === acks[i - 1]!.origin) steady.push(acks[i]!.at - acks[i - 1]!.at);

    const lostOn: string[] = [];
    const final = await call(master.url, 'GET', '/health');
    for (const n of nodes) await waitUntil(async () => (await call(n.url, 'GET', '/health')).body.position?.txid === final.body.position.txid, 10_000);
    for (const n of nodes) {
      const names = tenantNames(n);
      const missing = acks.filter((a) => !names.has(a.name)).length;
      if (missing > 0) lostOn.push(`${n.name} (${missing} of ${acks.length})`);
    }
    console.log(`\nSwitchover write gap${ON_ETCD ? ' (auto mode, through etcd)' : ''}: ${ROUNDS} rounds, 3 nodes, one client writing one tenant at a time (follows 307, retries 503 after 2 ms)`);
    printTable(
      ['figure', 'p50 ms', 'max ms'],
      [
        ['write gap (last ack on old master -> first ack on new)', fmt(quantile(gaps, 0.5), 1), fmt(Math.max(...gaps), 1)],
        ['POST /cluster/switchover call', fmt(quantile(calls, 0.5), 1), fmt(Math.max(...calls), 1)],
        ['baseline: time between two acks, same master', fmt(quantile(steady, 0.5), 2), fmt(Math.max(...steady), 1)],
      ],
    );
    console.log(`gap p50 / baseline p50 = ${fmt(quantile(gaps, 0.5) / quantile(steady, 0.5), 1)}x; ${acks.length} writes acknowledged; client retries: ${JSON.stringify(load.retries)}`);
    if (lostOn.length > 0) console.log(`acknowledged writes missing on: ${lostOn.join(', ')}`);
    return lostOn.length === 0;
  } finally {
    await cluster.close();
  }
}

if (isEntryPoint(import.meta.url)) {
  if (!(await runSwitchoverBench())) process.exitCode = 1;
}
