import type autocannon from 'autocannon';
import path from 'node:path';
import { openStore, type OpenedStore } from '../../server/src/db/open-store.js';
import type { Synchronous } from '../../server/src/db/connection.js';
import { createCluster } from '../../server/src/domain/clusters.js';
import { createNode } from '../../server/src/domain/nodes.js';
import { createTenant } from '../../server/src/domain/tenants.js';
import { TEST_SECRET } from '../helpers/server.js';
import { isEntryPoint } from './entry.js';
import {
  CONNECTIONS,
  createTenantAndCluster,
  fmt,
  measure,
  OPERATOR,
  printTable,
  startServer,
  tempDir,
  type Child,
  type Measured,
} from './harness.js';

const DOMAIN_SECONDS = { warmup: 1, run: 5 };
const HTTP_SECONDS = { warmup: 1, run: 5 };
const MODES: Synchronous[] = ['FULL', 'NORMAL'];

/** Node creates per second straight through the domain layer: one transaction each, no HTTP. */
function domainWrites(synchronous: Synchronous): { rate: number; cpuMicros: number } {
  const tmp = tempDir();
  let opened: OpenedStore | undefined;
  try {
    opened = openStore({ dbPath: path.join(tmp.dir, 'nebulagc.db'), synchronous, secret: TEST_SECRET });
    const { store } = opened;
    const tenant = createTenant(store, { name: 'bench' });
    const { cluster } = createCluster(store, { tenant_id: tenant.id, name: 'bench' });
    let n = 0;
    const burn = (seconds: number): number => {
      const end = performance.now() + seconds * 1000;
      let count = 0;
      while (performance.now() < end) {
        createNode(store, cluster.id, { name: `n${n++}` });
        count++;
      }
      return count;
    };
    burn(DOMAIN_SECONDS.warmup);
    const cpuBefore = process.cpuUsage();
    const count = burn(DOMAIN_SECONDS.run);
    const cpu = process.cpuUsage(cpuBefore);
    return { rate: count / DOMAIN_SECONDS.run, cpuMicros: (cpu.user + cpu.system) / count };
  } finally {
    opened?.close();
    tmp.remove();
  }
}

/** POST /api/v1/nodes under load, each request with a name of its own (names are unique per cluster). */
async function httpWrites(synchronous: Synchronous): Promise<Measured> {
  const tmp = tempDir();
  let server: Child | undefined;
  try {
    server = await startServer(path.join(tmp.dir, 'nebulagc.db'), { NEBULAGC_DB_SYNCHRONOUS: synchronous });
    const { clusterId } = await createTenantAndCluster(server.url);
    let n = 0;
    const request: autocannon.Request = {
      method: 'POST',
      headers: { ...OPERATOR, 'content-type': 'application/json' },
      setupRequest: (req) => ({ ...req, body: JSON.stringify({ cluster_id: clusterId, name: `n${n++}` }) }),
    };
    const label = `HTTP POST /api/v1/nodes, ${synchronous}`;
    return await measure(label, server, { path: '/api/v1/nodes', requests: [request] }, 201, HTTP_SECONDS);
  } finally {
    await server?.stop();
    tmp.remove();
  }
}

/** Returns false when any HTTP write was answered with another status than 201. */
export async function runWriteBench(): Promise<boolean> {
  const domain = new Map<Synchronous, { rate: number; cpuMicros: number }>();
  for (const mode of MODES) domain.set(mode, domainWrites(mode));
  const http = new Map<Synchronous, Measured>();
  for (const mode of MODES) http.set(mode, await httpWrites(mode));

  console.log(
    `\nWrites: node creates, fresh database per row; domain = one synchronous loop for ${DOMAIN_SECONDS.run} s, ` +
      `HTTP = autocannon ${CONNECTIONS} connections, ${HTTP_SECONDS.warmup} s warm-up + ${HTTP_SECONDS.run} s measured\n`,
  );
  const rows: string[][] = [];
  for (const mode of MODES) {
    const d = domain.get(mode)!;
    rows.push([`domain createNode, ${mode}`, fmt(d.rate), '', '', fmt(d.cpuMicros), '', '']);
  }
  for (const m of http.values()) {
    rows.push([m.label, fmt(m.rps), fmt(m.p50), fmt(m.p99), fmt(m.cpuMicros), String(m.unexpected), m.detail]);
  }
  printTable(['path', 'writes/s', 'p50 ms', 'p99 ms', 'CPU µs/write', 'unexpected', 'statuses'], rows);
  const ratio = (full: number, normal: number): string => fmt(normal / full, 2);
  console.log(
    `\nNORMAL/FULL: domain ${ratio(domain.get('FULL')!.rate, domain.get('NORMAL')!.rate)}, ` +
      `HTTP ${ratio(http.get('FULL')!.rps, http.get('NORMAL')!.rps)}`,
  );

  const bad = [...http.values()].filter((m) => m.unexpected > 0);
  for (const m of bad) console.log(`!! ${m.label}: ${m.unexpected} unexpected responses or errors (${m.detail})`);
  return bad.length === 0;
}

if (isEntryPoint(import.meta.url) && !(await runWriteBench())) process.exitCode = 1;
