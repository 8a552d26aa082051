/**
 * Fronting (docs/BENCHMARKS.md, "Write outage through HAProxy and NGINX" and "Read throughput
 * through HAProxy"). Real haproxy and nginx with the shipped configs, in front of three real
 * nodes on a real etcd.
 * - Outage: BENCH_FRONTING_ROUNDS (default 10) switchovers and as many kill -9 crash failovers
 *   through each proxy, while plain clients (no retries, no redirects followed) write and read.
 *   A round's outage is the longest time between two writes acknowledged through the proxy.
 * - Reads: GET /api/v1/tenants through HAProxy with autocannon, with all three node slots
 *   pointing at one node and then at three nodes, in the same run; the figure is the ratio.
 */
import autocannon from 'autocannon';
import { startAutoCluster } from '../helpers/auto-cluster.js';
import { clusterDir, startNode } from '../helpers/cluster.js';
import { startEtcd } from '../helpers/etcd.js';
import { crashThrough, FRONTED_ENV, OPERATOR, switchoverThrough } from '../helpers/fronting.js';
import { haproxyWritesTo, startHaproxy } from '../helpers/haproxy.js';
import { startNginx } from '../helpers/nginx.js';
import { call } from '../helpers/server.js';
import { isEntryPoint } from './entry.js';
import { CONNECTIONS, fmt, printTable, quantile } from './harness.js';

const ROUNDS = Number(process.env.BENCH_FRONTING_ROUNDS ?? 10);
const UNLIMITED = { NEBULAGC_RATE_LIMIT_IP_RPS: '1000000000', NEBULAGC_RATE_LIMIT_IP_BURST: '1000000000' };
const always = async (): Promise<boolean> => true;

interface Series {
  gaps: number[];
  errors: number;
  requests: number;
}

async function outageBench(): Promise<string[][]> {
  const etcd = await startEtcd();
  const cluster = await startAutoCluster('bench-fronting', { kind: 'etcd', endpoints: etcd.endpoint }, { env: { ...FRONTED_ENV, ...UNLIMITED, NEBULAGC_LOG_LEVEL: 'warn' } });
  const nodes = [...cluster.members];
  const hap = await startHaproxy(nodes.map((n) => n.url));
  const nginx = await startNginx(nodes.map((n) => n.url));
  const rows: string[][] = [];
  try {
    const proxies = [
      { name: 'HAProxy', url: hap.url, moved: (m: (typeof nodes)[number]) => haproxyWritesTo(hap, nodes, m) },
      { name: 'NGINX', url: nginx.url, moved: always },
    ];
    for (const p of proxies) {
      const switchover: Series = { gaps: [], errors: 0, requests: 0 };
      const crash: Series = { gaps: [], errors: 0, requests: 0 };
      for (let round = 0; round < ROUNDS; round++) {
        const s = await switchoverThrough(p.url, nodes, `${p.name}-s${round}`, p.moved);
        switchover.gaps.push(s.writeGapMs);
        switchover.errors += s.errors.length;
        switchover.requests += s.outcomes.length;
        const c = await crashThrough(p.url, cluster, nodes, `${p.name}-c${round}`, p.moved);
        crash.gaps.push(c.writeGapMs);
        crash.errors += c.errors.length;
        crash.requests += c.outcomes.length;
        console.log(`${p.name} round ${round + 1}: switchover gap ${fmt(s.writeGapMs)} ms (${s.errors.length} errors), crash gap ${fmt(c.writeGapMs)} ms (${c.errors.length} in-flight errors, failover ${fmt(c.failoverMs)} ms)`);
      }
      for (const [event, s] of [['switchover', switchover], ['crash (kill -9)', crash]] as const) {
        rows.push([p.name, event, String(s.gaps.length), fmt(quantile(s.gaps, 0.5)), fmt(Math.max(...s.gaps)), `${s.errors} of ${fmt(s.requests)}`]);
      }
    }
  } finally {
    await hap.stop();
    await nginx.stop();
    await cluster.remove();
    await etcd.stop();
  }
  return rows;
}

async function readRun(url: string): Promise<{ rps: number; p99: number; non2xx: number }> {
  const opts = { url: `${url}/api/v1/tenants`, headers: OPERATOR, connections: CONNECTIONS };
  await autocannon({ ...opts, duration: 3 });
  const r = await autocannon({ ...opts, duration: 10 });
  return { rps: r.requests.average, p99: r.latency.p99, non2xx: r.non2xx + r.errors + r.timeouts };
}

async function readBench(): Promise<string[][]> {
  const dir = clusterDir('bench-fronting-reads');
  const env = { ...FRONTED_ENV, ...UNLIMITED, NEBULAGC_SYNC_REPLICAS: '0', NEBULAGC_LOG_LEVEL: 'warn' };
  const master = await startNode('m', dir.root, { NEBULAGC_HA_MODE: 'master', ...env });
  const replicas = [await startNode('r1', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, ...env })];
  replicas.push(await startNode('r2', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, ...env }));
  try {
    for (let i = 0; i < 20; i++) await call(master.url, 'POST', '/api/v1/tenants', { headers: OPERATOR, json: { name: `read-bench-${i}` } });
    const one = await startHaproxy([master.url, master.url, master.url]);
    const oneNode = await readRun(one.url).finally(() => one.stop());
    const three = await startHaproxy([master.url, ...replicas.map((r) => r.url)]);
    const threeNodes = await readRun(three.url).finally(() => three.stop());
    return [
      ['1 node', fmt(oneNode.rps), fmt(oneNode.p99), String(oneNode.non2xx), '1.00'],
      ['3 nodes', fmt(threeNodes.rps), fmt(threeNodes.p99), String(threeNodes.non2xx), (threeNodes.rps / oneNode.rps).toFixed(2)],
    ];
  } finally {
    for (const n of [master, ...replicas]) await n.kill9();
    dir.remove();
  }
}

export async function runFrontingBench(): Promise<void> {
  console.log(`\nFronting: write outage through the proxies, ${ROUNDS} switchovers and ${ROUNDS} kill -9 failovers each (etcd, TTL 2 s, NEBULAGC_SYNC_REPLICAS=1)`);
  printTable(['proxy', 'event', 'rounds', 'outage p50 ms', 'outage max ms', 'client errors'], await outageBench());
  console.log(`\nRead throughput through HAProxy (GET /api/v1/tenants, ${CONNECTIONS} connections, 10 s after a 3 s warm-up)`);
  printTable(['nodes', 'req/s', 'p99 ms', 'non-2xx', 'ratio to 1 node'], await readBench());
}

if (isEntryPoint(import.meta.url)) await runFrontingBench();
