import { readFileSync } from 'node:fs';
import { startDaemon, waitForStatus } from '../helpers/daemon.js';
import { FakeCluster, FakeServer } from '../helpers/fake-control-plane.js';
import { isEntryPoint } from './entry.js';

const SECONDS = Number(process.env.BENCH_DAEMON_SECONDS ?? 20);
const CLK_TCK = 100;
const WARMUP_MS = 12_000;

interface Sample {
  rssKiB: number;
  cpuTicks: number;
}

/** RSS and user+system CPU ticks of one process, from /proc. */
function sample(pid: number): Sample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { rssKiB, cpuTicks: Number(fields[11]) + Number(fields[12]) };
}

/**
 * The daemon idling against a fake control plane whose config never changes: its own RSS and
 * the CPU it spends per second, with blocking polls and with plain polls. nebula's own cost is
 * not counted (it is a separate process).
 */
async function measure(label: string, blocking: boolean, poll: Record<string, number>): Promise<void> {
  const cluster = new FakeCluster();
  const server = await new FakeServer(cluster, { blocking }).start();
  const d = startDaemon([server.url], { log_level: 'warn', poll: { ...poll, request_timeout_seconds: 5 } });
  try {
    await waitForStatus(d, (s) => s.nebula_pid !== null && s.applied_sha256 !== null, 'running');
    // V8 runs a burst of GC work some seconds after start-up; the window measures the steady state after it.
    await new Promise((r) => setTimeout(r, WARMUP_MS));
    const pid = d.child.pid!;
    const requestsBefore = cluster.requests.length;
    const start = sample(pid);
    const t0 = Date.now();
    let peakRss = start.rssKiB;
    while (Date.now() - t0 < SECONDS * 1000) {
      await new Promise((r) => setTimeout(r, 500));
      peakRss = Math.max(peakRss, sample(pid).rssKiB);
    }
    const end = sample(pid);
    const elapsed = (Date.now() - t0) / 1000;
    const cpuMs = ((end.cpuTicks - start.cpuTicks) * 1000) / CLK_TCK;
    const requests = cluster.requests.length - requestsBefore;
    console.log(
      `| ${label} | ${elapsed.toFixed(1)} | ${requests} | ${(end.rssKiB / 1024).toFixed(1)} | ${(peakRss / 1024).toFixed(1)} | ${cpuMs.toFixed(0)} | ${((cpuMs / elapsed / 1000) * 100).toFixed(2)} |`,
    );
  } finally {
    await d.cleanup();
    await server.stop();
    cluster.cleanup();
  }
}

export async function runDaemonIdleBench(): Promise<void> {
  console.log(`daemon idle cost over ${SECONDS} s after ${WARMUP_MS / 1000} s of warm-up (CPU from /proc/<pid>/stat, ${CLK_TCK} ticks/s)`);
  console.log('| Mode | seconds | requests | RSS MiB | peak RSS MiB | CPU ms | CPU % of one core |');
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  await measure('blocking polls, wait 30 s (default)', true, { wait_seconds: 30, heartbeat_interval_seconds: 5 });
  await measure('blocking polls, wait 2 s', true, { wait_seconds: 2, heartbeat_interval_seconds: 5 });
  await measure('plain polls every 5 s (default)', false, { interval_seconds: 5, heartbeat_interval_seconds: 5 });
  await measure('plain polls every 1 s', false, { interval_seconds: 1, heartbeat_interval_seconds: 1 });
}

if (isEntryPoint(import.meta.url)) await runDaemonIdleBench();
