/**
 * Chaos on real processes: three nodes in auto mode with NEBULAGC_SYNC_REPLICAS=1 on a
 * three-member etcd, under a steady write load, while a random fault strikes every few seconds:
 * kill -9 of a node (restarted a little later), SIGSTOP of a node past the lock's TTL, kill -9
 * of an etcd member (restarted). One fault at a time, so one node or one etcd member is down at
 * most: what synchronous replication promises to survive. At the end: no acknowledged write is
 * lost, every copy holds the same position and checksum, and no two nodes ever took writes at
 * once. NEBULAGC_CHAOS_SECONDS sets the length (CI runs a short one; `npm run test:chaos` runs
 * five minutes).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { masterOf, masterWatch, startAutoCluster, type AutoCluster } from '../helpers/auto-cluster.js';
import { waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcdCluster, type EtcdCluster } from '../helpers/etcd.js';
import { health, isMaster, tenantNames } from '../helpers/probes.js';
import { WriteLoad } from '../helpers/write-load.js';

const SECONDS = Number(process.env.NEBULAGC_CHAOS_SECONDS ?? 40);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const pick = <T>(xs: T[]): T => xs[Math.floor(Math.random() * xs.length)]!;
const between = (lo: number, hi: number): number => lo + Math.random() * (hi - lo);
/** The master more often than not: its loss is what the election is for. */
const victimOf = async (nodes: ServerProcess[]): Promise<ServerProcess> => (Math.random() < 0.6 ? ((await masterOf(nodes)) ?? pick(nodes)) : pick(nodes));

let etcd: EtcdCluster | undefined;
let cluster: AutoCluster | undefined;
after(async () => {
  await cluster?.remove();
  await etcd?.stop();
});

describe('chaos', { timeout: (SECONDS + 240) * 1000 }, () => {
  it(`${SECONDS} s of random kill -9, SIGSTOP and etcd member restarts: no acknowledged write lost, identical copies, never two masters`, async (t) => {
    etcd = await startEtcdCluster(3);
    const c = await startAutoCluster('chaos', { kind: 'etcd', endpoints: etcd.endpoints }, { env: { NEBULAGC_SYNC_REPLICAS: '1', NEBULAGC_SYNC_TIMEOUT_MS: '3000' } });
    cluster = c;
    const nodes = new Map(c.members.map((m) => [m.name, m]));
    const live = (): ServerProcess[] => [...nodes.values()];

    const watch = masterWatch(live);

    const load = new WriteLoad(c.members.map((m) => m.url), 'chaos');
    load.start();
    const faults: string[] = [];
    let watched = { most: 0, masters: [] as string[] };
    const until = Date.now() + SECONDS * 1000;
    try {
      while (Date.now() < until) {
        await sleep(between(2000, 4000));
        const kind = pick(['kill', 'kill', 'stop', 'etcd']);
        if (kind === 'kill') {
          const victim = await victimOf(live());
          const wasMaster = await isMaster(victim).catch(() => false);
          await victim.kill9();
          faults.push(`kill -9 ${victim.name}${wasMaster ? ' (master)' : ''}`);
          await sleep(between(1000, 4000));
          nodes.set(victim.name, await c.restart(victim));
        } else if (kind === 'stop') {
          const victim = await victimOf(live());
          const wasMaster = await isMaster(victim).catch(() => false);
          victim.child.kill('SIGSTOP');
          faults.push(`SIGSTOP ${victim.name}${wasMaster ? ' (master)' : ''}`);
          await sleep(between(1000, 4000));
          victim.child.kill('SIGCONT');
        } else {
          const member = pick(etcd.members);
          await member.kill9();
          faults.push(`kill -9 etcd ${member.name}`);
          await sleep(between(1000, 4000));
          await member.start();
        }
        // The next fault waits until the cluster has a master and every node is back.
        const settled = await waitUntil(async () => {
          const states = await Promise.all(live().map(async (n) => ((await health(n).catch(() => undefined))?.ha_state as string | undefined) ?? 'down'));
          return states.filter((s) => s === 'master.serving').length === 1 && states.filter((s) => s === 'replica.following').length === 2;
        }, 60_000, 100);
        assert.ok(settled, `the cluster settles after ${faults.at(-1)}:\n${live().map((n) => `${n.name}:\n${n.output().slice(-2000)}`).join('\n---\n')}`);
      }
    } finally {
      watched = await watch.stop();
    }
    const acks = await load.stop();
    const master = (await masterOf(live()))!;
    assert.ok(master, 'a master at the end');
    const head = (await health(master)).position;
    for (const n of live()) {
      assert.ok(await waitUntil(async () => (await health(n)).position?.txid === head.txid, 20_000), `${n.name} catches up`);
      assert.deepEqual((await health(n)).position, head, `${n.name} holds the same position and checksum as the master`);
      const names = tenantNames(n);
      assert.deepEqual(acks.filter((a) => !names.has(a.name)).map((a) => a.name), [], `${n.name} holds every acknowledged write`);
    }
    assert.equal(watched.most, 1, 'never two nodes answering /health/master 200 at once');
    t.diagnostic(
      `chaos: ${SECONDS} s, ${faults.length} faults (${faults.join('; ')}), ${watched.masters.length - 1} changes of master, ${acks.length} writes acknowledged, ${load.retries.syncTimeouts} answered 503 SYNC_TIMEOUT, ${load.retries.unavailable} other 503s`,
    );
  });
});
