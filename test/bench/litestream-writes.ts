/**
 * Writes under Litestream's checkpoints (docs/BENCHMARKS.md, "Writes under Litestream's
 * checkpoints"). A master with a replica, writing small API writes one after another with a
 * 2 MiB bundle upload every tenth, for BENCH_LS_SECONDS (default 20): once with managed
 * Litestream (a file replica, so the figure is the checkpoints' and not the network's), once
 * without it (the server checkpointing itself), in the same run. Reports the small writes'
 * latency, failures, Litestream's checkpoints and the largest WAL seen.
 */
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import path from 'node:path';
import { litestreamSeq } from '../helpers/backup.js';
import { validBundle } from '../helpers/bundle.js';
import { clusterDir, startNode } from '../helpers/cluster.js';
import { call } from '../helpers/server.js';
import { isEntryPoint } from './entry.js';
import { fmt, OPERATOR, printTable, quantile } from './harness.js';

const SECONDS = Number(process.env.BENCH_LS_SECONDS ?? 20);

async function run(label: string, env: Record<string, string>): Promise<string[]> {
  const dir = clusterDir('bench-ls-writes');
  const base = { NEBULAGC_MAX_BUNDLE_BYTES: String(8 * 1024 * 1024), NEBULAGC_LOG_LEVEL: 'warn' };
  const master = await startNode('m', dir.root, { NEBULAGC_HA_MODE: 'master', ...base, ...env });
  const replica = await startNode('r', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, ...base, ...env });
  try {
    const t = await call(master.url, 'POST', '/api/v1/tenants', { headers: OPERATOR, json: { name: 'bench' } });
    const clusterId = (await call(master.url, 'POST', '/api/v1/clusters', { headers: OPERATOR, json: { tenant_id: t.body.id, name: 'bench' } })).body.cluster.id as string;
    const seq = litestreamSeq(master.dbPath);
    const latencies: number[] = [];
    let failures = 0;
    let maxWal = 0;
    const until = Date.now() + SECONDS * 1000;
    for (let i = 0; Date.now() < until; i++) {
      if (i % 10 === 0) {
        const blob = await validBundle([{ name: 'blob.bin', content: randomBytes(2 * 1024 * 1024) }]);
        if ((await call(master.url, 'POST', `/api/v1/config/bundle?cluster_id=${clusterId}`, { headers: OPERATOR, raw: blob })).status !== 201) failures++;
      }
      const started = performance.now();
      const r = await call(master.url, 'POST', '/api/v1/nodes', { headers: OPERATOR, json: { cluster_id: clusterId, name: `w${i}` } });
      latencies.push(performance.now() - started);
      if (r.status !== 201) failures++;
      maxWal = Math.max(maxWal, statSync(`${master.dbPath}-wal`).size);
    }
    return [label, String(latencies.length), String(failures), fmt(quantile(latencies, 0.5), 1), fmt(quantile(latencies, 0.99), 1), fmt(Math.max(...latencies), 1), String(litestreamSeq(master.dbPath) - seq), fmt(maxWal / 1048576, 1)];
  } finally {
    await replica.stop();
    await master.stop();
    dir.remove();
  }
}

export async function runLitestreamWritesBench(): Promise<void> {
  const backup = clusterDir('bench-ls-target');
  try {
    const rows = [
      await run('server checkpoints (no Litestream)', {}),
      await run('managed Litestream', { NEBULAGC_LITESTREAM_URL: `file://${path.join(backup.root, 'b')}` }),
    ];
    console.log(`\nWrites under Litestream's checkpoints: small writes one after another, a 2 MiB bundle every tenth, ${SECONDS} s each`);
    printTable(['run', 'writes', 'failed', 'p50 ms', 'p99 ms', 'max ms', 'Litestream checkpoints', 'WAL max MiB'], rows);
  } finally {
    backup.remove();
  }
}

if (isEntryPoint(import.meta.url)) await runLitestreamWritesBench();
