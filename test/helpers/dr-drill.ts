import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { masterOf, type AutoCluster } from './auto-cluster.js';
import { litestreamPids, managedConfigFile } from './backup.js';
import { waitUntil, type ServerProcess } from './cluster.js';
import { health, tenantNames } from './probes.js';
import { WriteLoad } from './write-load.js';

export interface DrRound {
  acked: number;
  /** Acknowledged writes missing after the restore. */
  lost: number;
  /** From the oldest lost acknowledgement to the loss of every node, ms; 0 when nothing was lost. */
  rpoMs: number;
  /** From starting the first node on an empty disk to it serving as master, ms. */
  restoreMs: number;
}

/**
 * One disaster: writes through the cluster, then every node and its litestream killed at once
 * (SIGKILL, as a lost machine: no last upload on the way out) and every data directory deleted.
 * The first node comes back with NEBULAGC_RESTORE_ON_BOOT, restores and becomes master; the
 * others then start empty and copy from it. Asserts that every write acknowledged more than
 * `guaranteedMs` before the loss is back, that the node restored, and that the rest follow.
 */
export async function disasterRound(cluster: AutoCluster, nodes: ServerProcess[], label: string, guaranteedMs: number, writeMs = 4000): Promise<DrRound> {
  const load = new WriteLoad(nodes.map((n) => n.url), label);
  load.start();
  await new Promise((r) => setTimeout(r, writeMs));
  const pids = nodes.flatMap((n) => litestreamPids(managedConfigFile(n.dbPath)));
  for (const pid of pids) process.kill(pid, 'SIGKILL');
  await Promise.all(nodes.map((n) => n.kill9()));
  const lostAt = performance.now();
  const acks = await load.stop();
  for (const n of nodes) rmSync(n.dir, { recursive: true, force: true });

  const started = performance.now();
  const first = await cluster.restart(nodes[0]!);
  nodes[0] = first;
  assert.ok(await waitUntil(async () => (await masterOf([first])) !== undefined, 60_000), `the restored node became master:\n${first.output().slice(-3000)}`);
  const restoreMs = performance.now() - started;
  assert.match(first.output(), /restore on boot: restored the latest backup/);
  for (let i = 1; i < nodes.length; i++) nodes[i] = await cluster.restart(nodes[i]!);
  for (const n of nodes.slice(1)) {
    assert.ok(await waitUntil(async () => (await health(n)).ha_state === 'replica.following', 60_000), `${n.name} copies from the restored master:\n${n.output().slice(-3000)}`);
    assert.doesNotMatch(n.output(), /restore on boot: restored/, 'a node with a master to copy from does not restore');
  }
  const names = tenantNames(first);
  const missing = acks.filter((a) => !names.has(a.name));
  const guaranteed = missing.filter((a) => a.at < lostAt - guaranteedMs);
  assert.deepEqual(guaranteed.map((a) => a.name), [], `writes acknowledged more than ${guaranteedMs} ms before the loss are all back`);
  const oldestLost = Math.min(...missing.map((a) => a.at));
  return { acked: acks.length, lost: missing.length, rpoMs: missing.length === 0 ? 0 : lostAt - oldestLost, restoreMs };
}
