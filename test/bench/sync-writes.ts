/**
 * Write throughput and latency with semi-synchronous replication (NEBULAGC_SYNC_REPLICAS=1)
 * against asynchronous (0), in the same run: a master and one replica, real processes, autocannon
 * posting tenant creates to the master (one small transaction each; node creates spend most of
 * their time signing a certificate with nebula-cert, which would hide the replication).
 * Each row starts fresh databases.
 */
import type autocannon from 'autocannon';
import path from 'node:path';
import { REPLICATION_SECRET, waitUntil } from '../helpers/cluster.js';
import { isEntryPoint } from './entry.js';
import { CONNECTIONS, fmt, measure, OPERATOR, printTable, startServer, tempDir, type Child, type Measured } from './harness.js';

const SECONDS = { warmup: 2, run: 8 };

const SEQUENTIAL = 300;

/** One client, one write at a time: each answer waits for the replica's ack in full. */
async function sequential(url: string, prefix: string): Promise<{ p50: number; p99: number }> {
  const ms: number[] = [];
  for (let i = 0; i < SEQUENTIAL; i++) {
    const started = performance.now();
    const res = await fetch(`${url}/api/v1/tenants`, { method: 'POST', headers: { ...OPERATOR, 'content-type': 'application/json' }, body: JSON.stringify({ name: `${prefix}${i}` }) });
    await res.arrayBuffer();
    if (res.status !== 201) throw new Error(`sequential write answered ${res.status}`);
    ms.push(performance.now() - started);
  }
  ms.sort((a, b) => a - b);
  return { p50: ms[Math.floor(ms.length / 2)]!, p99: ms[Math.floor(ms.length * 0.99)]! };
}

async function row(syncReplicas: number): Promise<Measured & { one: { p50: number; p99: number } }> {
  const tmp = tempDir();
  const children: Child[] = [];
  try {
    const ha = { NEBULAGC_REPLICATION_SECRET: REPLICATION_SECRET, NEBULAGC_SYNC_REPLICAS: String(syncReplicas) };
    const master = await startServer(path.join(tmp.dir, 'master.db'), { ...ha, NEBULAGC_HA_MODE: 'master', NEBULAGC_NODE_ID: 'master' });
    children.push(master);
    const replica = await startServer(path.join(tmp.dir, 'replica.db'), { ...ha, NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, NEBULAGC_NODE_ID: 'replica' });
    children.push(replica);
    await waitUntil(async () => ((await (await fetch(`${master.url}/health`)).json()) as { replicas?: number }).replicas === 1, 20_000);
    const one = await sequential(master.url, 'seq');
    let n = 0;
    const request: autocannon.Request = {
      method: 'POST',
      headers: { ...OPERATOR, 'content-type': 'application/json' },
      setupRequest: (req) => ({ ...req, body: JSON.stringify({ name: `t${n++}` }) }),
    };
    return { ...(await measure(`POST /api/v1/tenants, NEBULAGC_SYNC_REPLICAS=${syncReplicas}`, master, { path: '/api/v1/tenants', requests: [request] }, 201, SECONDS)), one };
  } finally {
    for (const c of children.reverse()) await c.stop();
    tmp.remove();
  }
}

export async function runSyncWriteBench(): Promise<boolean> {
  // Asynchronous before and after: the mean of the two is the baseline, so the order of the rows
  // (a warmer disk for later ones) does not favor either setting.
  const before = await row(0);
  const sync1 = await row(1);
  const after = await row(0);
  console.log(`\nSemi-synchronous writes: master + 1 replica (synchronous=FULL), autocannon ${CONNECTIONS} connections, ${SECONDS.warmup} s warm-up + ${SECONDS.run} s measured`);
  printTable(
    ['path', 'writes/s', 'p50 ms', 'p99 ms', 'master CPU µs/write', 'one client: p50 ms', 'p99 ms', 'unexpected', 'statuses'],
    [before, sync1, after].map((m) => [m.label, fmt(m.rps), fmt(m.p50), fmt(m.p99), fmt(m.cpuMicros), fmt(m.one.p50, 2), fmt(m.one.p99, 2), String(m.unexpected), m.detail]),
  );
  const rps = (before.rps + after.rps) / 2;
  const p99 = (before.p99 + after.p99) / 2;
  const oneP50 = (before.one.p50 + after.one.p50) / 2;
  console.log(`sync / mean async: writes/s ${fmt(sync1.rps / rps, 2)}, p99 ${fmt(sync1.p99 / Math.max(p99, 1), 2)}x; one client p50 ${fmt(sync1.one.p50 / oneP50, 2)}x (${SEQUENTIAL} writes each)`);
  return [before, sync1, after].every((m) => m.unexpected === 0);
}

if (isEntryPoint(import.meta.url) && !(await runSyncWriteBench())) process.exitCode = 1;
