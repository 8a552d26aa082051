import assert from 'node:assert/strict';
import { masterOf, masterWatch, type AutoCluster } from './auto-cluster.js';
import { waitUntil, type ServerProcess } from './cluster.js';
import { FrontedClient, longestWriteGap, succeeded, type Outcome } from './fronted-client.js';
import { health, tenantNames } from './probes.js';
import { call, TEST_ADMIN_TOKEN } from './server.js';

/** What every node behind a load balancer runs with (docs/OPERATIONS.md, "Fronting"); semi-sync so an acknowledged write survives a crash. */
export const FRONTED_ENV = { NEBULAGC_REPLICA_WRITES: 'proxy', NEBULAGC_TRUST_PROXY: 'true', NEBULAGC_SYNC_REPLICAS: '1' };
export const OPERATOR = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

export interface Drill {
  outcomes: Outcome[];
  errors: Outcome[];
  /** Longest time between two acknowledged writes from the event on, ms. */
  writeGapMs: number;
  newMaster: ServerProcess;
}

export interface CrashDrill extends Drill {
  /** Kill to a node answering /health/master. */
  failoverMs: number;
  /** Kill to the first write acknowledged through the proxy that was sent after it. */
  recoveredMs: number;
}

const errorsOf = (outcomes: Outcome[]): Outcome[] => outcomes.filter((o) => !succeeded(o));
export const describeErrors = (errors: Outcome[]): string => JSON.stringify(errors.slice(0, 10).map((e) => ({ kind: e.kind, status: e.status, code: e.code })));

function assertNoAckLost(outcomes: Outcome[], master: ServerProcess): void {
  const names = tenantNames(master);
  const acked = outcomes.filter((o) => o.kind === 'write' && succeeded(o)).map((o) => o.name!);
  assert.deepEqual(acked.filter((n) => !names.has(n)), [], 'every acknowledged write is on the new master');
}

/**
 * A switchover asked of the master while plain clients write and read through `proxyUrl`;
 * `moved` says when the proxy sends writes to the new master. Asserts no acknowledged write lost.
 */
export async function switchoverThrough(proxyUrl: string, nodes: ServerProcess[], label: string, moved: (m: ServerProcess) => Promise<boolean>): Promise<Drill> {
  const old = (await masterOf(nodes))!;
  const client = new FrontedClient(proxyUrl, label, { writers: 2, readers: 2 });
  client.start();
  await new Promise((r) => setTimeout(r, 1000));
  const t0 = performance.now();
  const res = await call(old.url, 'POST', '/cluster/switchover', { headers: OPERATOR, json: {} });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  let next: ServerProcess | undefined;
  assert.ok(await waitUntil(async () => (next = await masterOf(nodes)) !== undefined && next !== old, 15_000), 'a new master');
  assert.ok(await waitUntil(() => moved(next!), 15_000), 'the proxy sends writes to the new master');
  await new Promise((r) => setTimeout(r, 1500));
  const outcomes = await client.stop();
  assert.ok(outcomes.some((o) => o.kind === 'write' && o.start > t0 && succeeded(o)), 'writes went on after the switchover');
  assertNoAckLost(outcomes, next!);
  return { outcomes, errors: errorsOf(outcomes), writeGapMs: longestWriteGap(outcomes, t0), newMaster: next! };
}

/**
 * kill -9 of the master while plain clients write and read through `proxyUrl`. Asserts a single
 * new master, no acknowledged write lost, and that the only errors are requests in flight to
 * the master as it died (they may have run there, so no proxy may send them again).
 */
export async function crashThrough(proxyUrl: string, cluster: AutoCluster, nodes: ServerProcess[], label: string, moved: (m: ServerProcess) => Promise<boolean>): Promise<CrashDrill> {
  const old = (await masterOf(nodes))!;
  const rest = nodes.filter((n) => n !== old);
  const watch = masterWatch(() => rest);
  const client = new FrontedClient(proxyUrl, label, { writers: 2, readers: 2 });
  client.start();
  await new Promise((r) => setTimeout(r, 1000));
  const killedAt = performance.now();
  await old.kill9();
  const diedAt = performance.now();
  let elected = 0;
  let next: ServerProcess | undefined;
  assert.ok(
    await waitUntil(async () => {
      next = await masterOf(rest);
      if (next && !elected) elected = performance.now();
      return next !== undefined;
    }, 20_000),
    'a replica took over',
  );
  assert.ok(await waitUntil(() => moved(next!), 15_000), 'the proxy sends writes to the new master');
  await new Promise((r) => setTimeout(r, 1500));
  const outcomes = await client.stop();
  assert.equal((await watch.stop()).most, 1, 'never two masters');
  const first = outcomes.filter((o) => o.kind === 'write' && succeeded(o) && o.start > killedAt).sort((a, b) => a.end - b.end)[0];
  assert.ok(first, 'writes through the proxy succeed again');
  const errors = errorsOf(outcomes);
  const unexplained = errors.filter((e) => !(e.start <= diedAt && e.end >= killedAt));
  assert.deepEqual(unexplained, [], `errors other than requests in flight at the kill: ${describeErrors(unexplained)}`);
  assertNoAckLost(outcomes, next!);
  const back = await cluster.restart(old);
  nodes[nodes.indexOf(old)] = back;
  assert.ok(await waitUntil(async () => (await health(back)).ha_state === 'replica.following', 30_000), `the killed node follows again:\n${back.output().slice(-2000)}`);
  return { outcomes, errors, writeGapMs: longestWriteGap(outcomes, killedAt - 1000), newMaster: next!, failoverMs: elected - killedAt, recoveredMs: first.end - killedAt };
}
