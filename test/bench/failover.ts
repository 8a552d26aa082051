/**
 * Crash failover time in auto mode on a real etcd (TTL 2 s): three nodes, a client writing one
 * tenant at a time (follows 307s, moves to the next node when one does not answer), and
 * BENCH_FAILOVER_ROUNDS rounds (default 20) of kill -9 of the master. A round's figure is the
 * time from the kill to the first write the new master acknowledged; the old master is then
 * restarted and rejoins as a replica before the next round.
 */
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd } from '../helpers/etcd.js';
import { health, isMaster, tenantNames } from '../helpers/probes.js';
import { WriteLoad } from '../helpers/write-load.js';
import { isEntryPoint } from './entry.js';
import { fmt, printTable } from './harness.js';

const ROUNDS = Number(process.env.BENCH_FAILOVER_ROUNDS ?? 20);
const TTL_S = 2;

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

export async function runFailoverBench(): Promise<boolean> {
  const etcd = await startEtcd();
  const dir = clusterDir('bench-failover');
  let live: ServerProcess[] = [];
  try {
    const env = { NEBULAGC_HA_MODE: 'auto', NEBULAGC_ETCD_ENDPOINTS: etcd.endpoint, NEBULAGC_LOCK_TTL_S: String(TTL_S), NEBULAGC_LOG_LEVEL: 'warn' };
    live = await Promise.all(['n1', 'n2', 'n3'].map((n) => startNode(n, dir.root, env)));
    const masterOf = async (): Promise<ServerProcess | undefined> => {
      for (const m of live) if (await isMaster(m).catch(() => false)) return m;
      return undefined;
    };
    await waitUntil(async () => (await masterOf()) !== undefined, 30_000);
    const load = new WriteLoad(live.map((m) => m.url), 'bench', 1);
    load.start();
    const times: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const master = await masterOf();
      if (!master) throw new Error(`round ${round}: no master`);
      const before = load.acks.length;
      await waitUntil(() => load.acks.length >= before + 50, 20_000);
      const killedAt = performance.now();
      await master.kill9();
      live = live.filter((m) => m !== master);
      await waitUntil(() => load.acks.some((a) => a.at > killedAt && a.origin !== master.url), 30_000, 5);
      times.push(load.acks.find((a) => a.at > killedAt && a.origin !== master.url)!.at - killedAt);
      const back = await startNode(master.name, dir.root, env, master.port);
      live.push(back);
      await waitUntil(async () => (await health(back)).ha_state === 'replica.following', 30_000);
    }
    const acks = await load.stop();
    const master = (await masterOf())!;
    const names = tenantNames(master);
    const missing = acks.filter((a) => !names.has(a.name)).length;
    console.log(`\nCrash failover on etcd (TTL ${TTL_S} s): ${ROUNDS} rounds of kill -9 of the master, 3 nodes, asynchronous replication, one client`);
    printTable(
      ['figure', 'p50 ms', 'p99 ms', 'max ms'],
      [['kill -9 -> first write acknowledged by the new master', fmt(quantile(times, 0.5)), fmt(quantile(times, 0.99)), fmt(Math.max(...times))]],
    );
    console.log(`goal p99 <= TTL + 1 s = ${(TTL_S + 1) * 1000} ms: ${quantile(times, 0.99) <= (TTL_S + 1) * 1000 ? 'met' : 'not met'}; ${acks.length} writes acknowledged, ${missing} of them missing on the last master (asynchronous: writes acknowledged just before a kill may be lost)`);
    return true;
  } finally {
    await Promise.all(live.map((m) => m.kill9()));
    await etcd.stop();
    dir.remove();
  }
}

if (isEntryPoint(import.meta.url)) await runFailoverBench();
