import autocannon from 'autocannon';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../helpers/cluster.js';
import { call, TEST_ADMIN_TOKEN, TEST_SECRET } from '../helpers/server.js';

export { freePort };

/** The compiled tree (dist/), which this file sits in as dist/test/bench/harness.js. */
const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SERVER_MAIN = path.join(DIST, 'server/src/cli/main.js');
export const BARE_HONO = path.join(DIST, 'test/bench/bare-hono.js');

export const CONNECTIONS = 50;
export const OPERATOR = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

export function tempDir(): { dir: string; remove(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-bench-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}


export interface Child {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
// A bench that crashes must not leave a server holding a port and burning a core.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Kills `child` if the bench process exits without stopping it (for children not started by startChild). */
export function killOnExit(child: ChildProcess): void {
  running.add(child);
  child.once('exit', () => running.delete(child));
}

const READY_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 7_000;
const OUTPUT_TAIL = 4096;

/** Spawns a Node script listening on 127.0.0.1:`port`, and waits until `readyPath` answers. */
export async function startChild(
  script: string,
  args: string[],
  env: Record<string, string>,
  port: number,
  readyPath: string,
): Promise<Child> {
  // NEBULAGC_* settings of the calling shell would silently change what is measured.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const child = spawn(process.execPath, [script, ...args], {
    env: { ...inherited, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-OUTPUT_TAIL);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      running.delete(child);
      resolve();
    }),
  );

  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  };

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${path.basename(script)} exited before it was ready:\n${output}`);
    }
    try {
      if ((await fetch(url + readyPath)).ok) return { url, pid: child.pid!, stop };
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${path.basename(script)} was not ready within ${READY_TIMEOUT_MS} ms:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const HUGE = '1000000000';

/** The real server, with limits so high the limiter code runs on every request but never refuses. */
export async function startServer(dbPath: string, extraEnv: Record<string, string> = {}): Promise<Child> {
  const port = await freePort();
  return startChild(
    SERVER_MAIN,
    ['serve'],
    {
      NEBULAGC_LISTEN: `127.0.0.1:${port}`,
      NEBULAGC_DB_PATH: dbPath,
      NEBULAGC_HMAC_SECRET: TEST_SECRET,
      NEBULAGC_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      NEBULAGC_LOG_LEVEL: 'warn',
      NEBULAGC_RATE_LIMIT_IP_RPS: HUGE,
      NEBULAGC_RATE_LIMIT_IP_BURST: HUGE,
      NEBULAGC_RATE_LIMIT_NODE_RPS: HUGE,
      NEBULAGC_RATE_LIMIT_NODE_BURST: HUGE,
      NEBULAGC_RATE_LIMIT_CLUSTER_RPS: HUGE,
      NEBULAGC_RATE_LIMIT_CLUSTER_BURST: HUGE,
      ...extraEnv,
    },
    port,
    '/health/live',
  );
}

/** One API call during setup; anything but `status` aborts the bench. */
export async function api<T>(
  base: string,
  method: string,
  url: string,
  status: number,
  opts: Parameters<typeof call>[3] = {},
): Promise<T> {
  const r = await call<T>(base, method, url, opts);
  if (r.status !== status) {
    throw new Error(`${method} ${url}: expected ${status}, got ${r.status}: ${JSON.stringify(r.body)}`);
  }
  return r.body;
}

export async function createTenantAndCluster(base: string): Promise<{ clusterId: string; clusterToken: string }> {
  const tenant = await api<{ id: string }>(base, 'POST', '/api/v1/tenants', 201, {
    headers: OPERATOR,
    json: { name: 'bench' },
  });
  const created = await api<{ cluster: { id: string }; token: string }>(base, 'POST', '/api/v1/clusters', 201, {
    headers: OPERATOR,
    json: { tenant_id: tenant.id, name: 'bench' },
  });
  return { clusterId: created.cluster.id, clusterToken: created.token };
}

export interface Measured {
  label: string;
  rps: number;
  p50: number;
  p99: number;
  /**
   * CPU time (user + system, all threads) the target process spent per response. Unlike req/s
   * it hardly moves when other work shares the cores, so it is the steadier figure here.
   */
  cpuMicros: number | undefined;
  /** Responses with another status than expected, plus connection errors and timeouts. */
  unexpected: number;
  detail: string;
}

/** utime + stime from /proc (Linux only), whose unit, USER_HZ, is 100 per second on every Linux ABI. */
export function cpuTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return undefined;
  }
}

type LoadOptions = Pick<autocannon.Options, 'headers' | 'requests'> & { path: string };

/**
 * Runs a warm-up (discarded, so JIT and caches settle) and then the measured run, both with
 * the same settings, and counts every response that is not `expectStatus`.
 */
export async function measure(
  label: string,
  target: Child,
  load: LoadOptions,
  expectStatus: number,
  seconds: { warmup: number; run: number },
): Promise<Measured> {
  const { path: urlPath, ...rest } = load;
  const opts: autocannon.Options = { ...rest, url: target.url + urlPath, connections: CONNECTIONS };
  await autocannon({ ...opts, duration: seconds.warmup });
  const cpuBefore = cpuTime(target.pid);
  const r = await autocannon({ ...opts, duration: seconds.run });
  const cpuAfter = cpuTime(target.pid);
  const responses = r['1xx'] + r['2xx'] + r['3xx'] + r['4xx'] + r['5xx'];
  const codes = r.statusCodeStats ?? {};
  const expected = codes[`${expectStatus}`]?.count ?? 0;
  const unexpected = responses - expected + r.errors + r.timeouts;
  const seen = Object.entries(codes)
    .map(([code, s]) => `${code}×${s.count ?? 0}`)
    .join(' ');
  const detail = `${seen}${r.errors ? ` errors×${r.errors}` : ''}${r.timeouts ? ` timeouts×${r.timeouts}` : ''}`;
  const cpuMicros =
    cpuBefore !== undefined && cpuAfter !== undefined && responses > 0 ? (cpuAfter - cpuBefore) / responses : undefined;
  return { label, rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, cpuMicros, unexpected, detail };
}

export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  console.log(line(headers));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const r of rows) console.log(line(r));
}

/** The q-quantile of `xs` (nearest rank). */
export const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

export const fmt = (n: number | undefined, digits = 0): string =>
  n === undefined ? '–' : n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
