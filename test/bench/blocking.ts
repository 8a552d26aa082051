import { readFileSync } from 'node:fs';
import { setMaxListeners } from 'node:events';
import http from 'node:http';
import { clusterDir, startNode, type ServerProcess } from '../helpers/cluster.js';
import { NebulaHost } from '../helpers/nebula.js';
import { isEntryPoint } from './entry.js';
import { api, cpuTime, fmt, OPERATOR, printTable } from './harness.js';

// Overridable to try smaller runs by hand; the recorded figures use the defaults.
const NODES = Number(process.env.BENCH_BLOCKING_NODES ?? 1000);
const HELD = Number(process.env.BENCH_BLOCKING_HELD ?? 10_000);
const HOLD_WINDOW_MS = 10_000;
const SETUP_ENV = {
  NEBULAGC_LOG_LEVEL: 'warn',
  NEBULAGC_DB_SYNCHRONOUS: 'NORMAL',
  NEBULAGC_RATE_LIMIT_IP_RPS: '1000000000',
  NEBULAGC_RATE_LIMIT_NODE_RPS: '1000000000',
  NEBULAGC_RATE_LIMIT_CLUSTER_RPS: '1000000000',
};

interface Poller {
  headers: Record<string, string>;
  version: number;
}

const percentile = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function heldOn(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^nebulagc_blocking_polls_held (\d+)/m.exec(text)?.[1] ?? NaN);
}

async function until(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('timed out waiting for the pollers to be held');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Blocking polls under load, all on 127.0.0.1 with real processes: a cluster of 1,000 nodes,
 * one simulated daemon (a held HTTP request on a keep-alive connection) per node. A lighthouse
 * assigned through the API changes every node's config; the figure is the time from sending
 * that request to each poller receiving its new version. Then the same with the pollers on a
 * replica (the write still goes to the master), and the server's RSS and CPU while it holds
 * 10,000 polls.
 */
export async function runBlockingBench(): Promise<boolean> {
  const dir = clusterDir('bench-blocking');
  const servers: ServerProcess[] = [];
  const host = new NebulaHost();
  // Plain node:http with keep-alive: lighter per request than fetch, so the client is not what is measured.
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  try {
    const master = await startNode('master', dir.root, { ...SETUP_ENV, NEBULAGC_HA_MODE: 'master' });
    servers.push(master);
    const tenant = await api<{ id: string }>(master.url, 'POST', '/api/v1/tenants', 201, { headers: OPERATOR, json: { name: 'bench' } });
    const cluster = await api<{ cluster: { id: string } }>(master.url, 'POST', '/api/v1/clusters', 201, {
      headers: OPERATOR,
      json: { tenant_id: tenant.id, name: 'bench' },
    });
    const clusterId = cluster.cluster.id;
    const created = performance.now();
    const nodes: { id: string; headers: Record<string, string> }[] = [];
    for (let i = 0; i < NODES; i++) {
      const n = await api<{ node: { id: string }; token: string }>(master.url, 'POST', '/api/v1/nodes', 201, {
        headers: OPERATOR,
        json: { cluster_id: clusterId, name: `n${i}`, overlay_ip: `10.42.${1 + Math.floor(i / 250)}.${1 + (i % 250)}` },
      });
      nodes.push({ id: n.node.id, headers: { 'x-nebulagc-node-token': n.token } });
    }
    // Enrolled, as real daemons are, so each node has a certificate and a bundle to download.
    // One key pair serves every node; the server signs a certificate per node all the same.
    const publicKey = host.keygen().publicKey;
    for (const n of nodes) await api(master.url, 'POST', '/api/v1/enroll', 200, { headers: n.headers, json: { public_key: publicKey } });
    const createMs = performance.now() - created;
    const replica = await startNode('replica', dir.root, { ...SETUP_ENV, NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url });
    servers.push(replica);

    const get = (base: string, p: Poller, query: string, signal?: AbortSignal): Promise<{ version: number; at: number }> =>
      new Promise((resolve, reject) => {
        const req = http.get(`${base}/api/v1/config/version${query}`, { headers: p.headers, agent, signal }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const at = performance.now();
            const body = JSON.parse(Buffer.concat(chunks).toString()) as { version: number };
            if (res.statusCode !== 200) reject(new Error(`poll answered ${res.statusCode}: ${JSON.stringify(body)}`));
            else resolve({ version: body.version, at });
          });
        });
        req.on('error', reject);
      });

    let lighthouse = 0;
    const propagation = async (target: ServerProcess): Promise<{ p50: number; p99: number; max: number; apiMs: number }> => {
      const pollers: Poller[] = [];
      for (const n of nodes) pollers.push({ headers: n.headers, version: (await get(target.url, { headers: n.headers, version: 0 }, '')).version });
      const answers = pollers.map((p) => get(target.url, p, `?index=${p.version}&wait=60s`));
      await until(async () => (await heldOn(target.url)) >= pollers.length, 60_000);
      const sent = performance.now();
      await api(master.url, 'POST', '/api/v1/topology/lighthouses', 200, {
        headers: OPERATOR,
        json: { node_id: nodes[lighthouse++]!.id, public_ip: `192.0.2.${lighthouse}` },
      });
      const apiMs = performance.now() - sent;
      const results = await Promise.all(answers);
      const lags = results.map((r, i) => {
        if (r.version === pollers[i]!.version) throw new Error('a poller was answered without a new version');
        return r.at - sent;
      });
      lags.sort((a, b) => a - b);
      return { p50: percentile(lags, 50), p99: percentile(lags, 99), max: lags[lags.length - 1]!, apiMs };
    };

    const onMaster = await propagation(master);
    const onReplica = await propagation(replica);

    // 10,000 held polls: ten per node, none of which will be answered during the window.
    const idleRss = rssMiB(master.child.pid!);
    const versions = await Promise.all(nodes.map((n) => get(master.url, { headers: n.headers, version: 0 }, '')));
    const hang = new AbortController();
    setMaxListeners(HELD + 10, hang.signal);
    const held = Array.from({ length: HELD }, (_, i) =>
      get(master.url, { headers: nodes[i % NODES]!.headers, version: 0 }, `?index=${versions[i % NODES]!.version}&wait=5m`, hang.signal).catch(
        () => undefined,
      ),
    );
    await until(async () => (await heldOn(master.url)) >= HELD, 120_000);
    const cpu0 = cpuTime(master.child.pid!);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, HOLD_WINDOW_MS));
    const cpuPct = ((cpuTime(master.child.pid!)! - cpu0!) / 1000 / (performance.now() - t0)) * 100;
    const heldRss = rssMiB(master.child.pid!);
    hang.abort();
    await Promise.all(held);
    await until(async () => (await heldOn(master.url)) === 0, 60_000);

    console.log(
      `\nBlocking polls: ${NODES} nodes in one cluster (created and enrolled through the API in ${fmt(createMs / 1000, 1)} s), ` +
        `one held poll per node, in one client process (node:http, keep-alive). The change: a lighthouse assigned on the master, ` +
        `which moves every node's version.\n`,
    );
    printTable(
      ['pollers on', 'API call ms', 'p50 ms', 'p99 ms', 'max ms'],
      [
        ['master', fmt(onMaster.apiMs, 1), fmt(onMaster.p50, 1), fmt(onMaster.p99, 1), fmt(onMaster.max, 1)],
        ['replica', fmt(onReplica.apiMs, 1), fmt(onReplica.p50, 1), fmt(onReplica.p99, 1), fmt(onReplica.max, 1)],
      ],
    );
    console.log(`\nHolding ${HELD} polls on the master for ${HOLD_WINDOW_MS / 1000} s:\n`);
    printTable(
      ['RSS before MiB', 'RSS holding MiB', 'per held poll KiB', 'CPU while holding %'],
      [[fmt(idleRss, 0), fmt(heldRss, 0), fmt(((heldRss - idleRss) * 1024) / HELD, 1), fmt(cpuPct, 2)]],
    );
    return onMaster.p99 < 1000 && onReplica.p99 < 1000;
  } finally {
    agent.destroy();
    host.cleanup();
    for (const s of servers.reverse()) await s.stop().catch(() => undefined);
    dir.remove();
  }
}

if (isEntryPoint(import.meta.url) && !(await runBlockingBench())) process.exitCode = 1;
