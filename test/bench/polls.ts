import path from 'node:path';
import { validBundle } from '../helpers/bundle.js';
import { NebulaHost } from '../helpers/nebula.js';
import { call } from '../helpers/server.js';
import { isEntryPoint } from './entry.js';
import {
  api,
  BARE_HONO,
  CONNECTIONS,
  createTenantAndCluster,
  fmt,
  freePort,
  measure,
  OPERATOR,
  printTable,
  startChild,
  startServer,
  tempDir,
  type Child,
  type Measured,
} from './harness.js';

const SECONDS = { warmup: 2, run: 8 };

/**
 * Requests/s of the two calls every daemon makes every few seconds, against a bare Hono route
 * on the same adapter. Returns false when any response had an unexpected status.
 */
export async function runPollBench(): Promise<boolean> {
  const tmp = tempDir();
  const host = new NebulaHost();
  const children: Child[] = [];
  try {
    const server = await startServer(path.join(tmp.dir, 'nebulagc.db'));
    children.push(server);
    const barePort = await freePort();
    const bare = await startChild(BARE_HONO, [String(barePort)], {}, barePort, '/');
    children.push(bare);

    const { clusterId } = await createTenantAndCluster(server.url);
    const node = await api<{ token: string }>(server.url, 'POST', '/api/v1/nodes', 201, {
      headers: OPERATOR,
      json: { cluster_id: clusterId, name: 'poller', overlay_ip: '10.42.0.9' },
    });
    await api(server.url, 'POST', `/api/v1/config/bundle?cluster_id=${clusterId}`, 201, {
      headers: OPERATOR,
      raw: await validBundle(),
      contentType: 'application/gzip',
    });
    const nodeHeaders = { 'x-nebulagc-node-token': node.token };
    // A node token gets its own rendered bundle, which needs a certificate: enroll as a daemon would.
    await api(server.url, 'POST', '/api/v1/enroll', 200, { headers: nodeHeaders, json: { public_key: host.keygen().publicKey } });
    const etag = (await call(server.url, 'GET', '/api/v1/config/bundle', { headers: nodeHeaders })).headers.get('etag')!;
    const pollHeaders = { ...nodeHeaders, 'if-none-match': etag };
    // One request of each kind first, so a setup mistake fails loudly instead of as a fast 4xx.
    await api(server.url, 'GET', '/api/v1/config/version', 200, { headers: nodeHeaders });
    await api(server.url, 'GET', '/api/v1/config/bundle', 304, { headers: pollHeaders });

    // The baseline runs before and after, so drift from other load on the machine shows up.
    const bareBefore = await measure('(c) bare Hono, before', bare, { path: '/' }, 200, SECONDS);
    const version = await measure(
      '(a) GET /api/v1/config/version',
      server,
      { path: '/api/v1/config/version', headers: nodeHeaders },
      200,
      SECONDS,
    );
    const bundle = await measure(
      '(b) GET /api/v1/config/bundle → 304',
      server,
      { path: '/api/v1/config/bundle', headers: pollHeaders },
      304,
      SECONDS,
    );
    const bareAfter = await measure('(c) bare Hono, after', bare, { path: '/' }, 200, SECONDS);
    const baseline = (bareBefore.rps + bareAfter.rps) / 2;
    const baselineCpu =
      bareBefore.cpuMicros !== undefined && bareAfter.cpuMicros !== undefined
        ? (bareBefore.cpuMicros + bareAfter.cpuMicros) / 2
        : undefined;

    console.log(
      `\nPolls: autocannon, ${CONNECTIONS} connections, ${SECONDS.warmup} s warm-up + ${SECONDS.run} s measured each.\n` +
        `ratio = req/s ÷ mean req/s of the two (c) runs; cpu ratio = mean (c) CPU µs/req ÷ this row's CPU µs/req\n`,
    );
    const all: Measured[] = [bareBefore, version, bundle, bareAfter];
    printTable(
      ['target', 'req/s', 'p50 ms', 'p99 ms', 'ratio', 'CPU µs/req', 'cpu ratio', 'unexpected', 'statuses'],
      all.map((m) => [
        m.label,
        fmt(m.rps),
        fmt(m.p50),
        fmt(m.p99),
        fmt(m.rps / baseline, 2),
        fmt(m.cpuMicros),
        fmt(baselineCpu !== undefined && m.cpuMicros !== undefined ? baselineCpu / m.cpuMicros : undefined, 2),
        String(m.unexpected),
        m.detail,
      ]),
    );
    const bad = all.filter((m) => m.unexpected > 0);
    for (const m of bad) console.log(`!! ${m.label}: ${m.unexpected} unexpected responses or errors (${m.detail})`);
    return bad.length === 0;
  } finally {
    for (const child of children) await child.stop();
    host.cleanup();
    tmp.remove();
  }
}

if (isEntryPoint(import.meta.url) && !(await runPollBench())) process.exitCode = 1;
