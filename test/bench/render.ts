import path from 'node:path';
import { openStore } from '../../server/src/db/open-store.js';
import { bumpConfigVersion, createCluster } from '../../server/src/domain/clusters.js';
import { configYaml, packNodeBundle, renderNode } from '../../server/src/domain/render/bundle.js';
import { loadCluster } from '../../server/src/domain/render/versions.js';
import { createTenant } from '../../server/src/domain/tenants.js';
import { validBundle } from '../helpers/bundle.js';
import { TEST_SECRET } from '../helpers/server.js';
import { isEntryPoint } from './entry.js';
import { fmt, printTable, tempDir } from './harness.js';
import { inspectBundle, defaultBundleLimits } from '../../server/src/domain/bundle-archive.js';
import { storeBundle } from '../../server/src/domain/bundles.js';

const NODES = 100;
const ROUNDS = 200;
// A certificate of realistic size: what nebula-cert signs is about 300 bytes of PEM.
const CERT = `-----BEGIN NEBULA CERTIFICATE-----\n${'A'.repeat(64)}\n`.repeat(4) + '-----END NEBULA CERTIFICATE-----\n';

/**
 * What rendering costs, in one process on a real database: a cluster of 100 nodes (every tenth
 * a lighthouse, every twentieth a relay, every fifth advertising a route), with an uploaded
 * template. Reports µs per node for the write path (config + content hash, run for every node of
 * the cluster inside each write that bumps it), for the YAML alone and the served archive (YAML +
 * tar.gz, built once per node version when the node downloads it), and the whole re-rendering
 * write transaction.
 */
export async function runRenderBench(): Promise<boolean> {
  const tmp = tempDir();
  const opened = openStore({ dbPath: path.join(tmp.dir, 'render.db'), synchronous: 'NORMAL', secret: TEST_SECRET });
  try {
    const { store } = opened;
    const tenant = createTenant(store, { name: 'bench' });
    const { cluster } = createCluster(store, { tenant_id: tenant.id, name: 'bench', ca_cert: CERT });
    const template = await inspectBundle(await validBundle([], 'tun:\n  dev: nebula1\nlogging:\n  level: info\n'), defaultBundleLimits(1 << 20));
    storeBundle(store, cluster.id, template, 'bench');
    store.writer.write('bench.seed', (db) => {
      const insert = db.prepare(
        `INSERT INTO nodes (id, cluster_id, name, token_hash, overlay_ip, routes, is_lighthouse, public_ip, is_relay, cert_pem, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'now', 'now')`,
      );
      for (let i = 0; i < NODES; i++) {
        insert.run(
          `n${i}`,
          cluster.id,
          `node-${i}`,
          `hash-${i}`,
          `10.42.${i >> 8}.${(i & 255) + 1}`,
          JSON.stringify(i % 5 === 0 ? [`172.16.${i}.0/24`] : []),
          i % 10 === 0 ? 1 : 0,
          i % 10 === 0 ? `192.0.2.${i + 1}` : null,
          i % 20 === 0 ? 1 : 0,
          CERT,
        );
      }
    });
    const state = loadCluster(store.reader, cluster.id)!;
    const ids = [...state.nodes.keys()];

    const timeIt = (rounds: number, fn: () => void): number => {
      for (let r = 0; r < Math.min(20, rounds); r++) fn();
      const t0 = performance.now();
      for (let r = 0; r < rounds; r++) fn();
      return ((performance.now() - t0) * 1000) / rounds;
    };
    const timeAsync = async (rounds: number, fn: () => Promise<void>): Promise<number> => {
      for (let r = 0; r < Math.min(5, rounds); r++) await fn();
      const t0 = performance.now();
      for (let r = 0; r < rounds; r++) await fn();
      return ((performance.now() - t0) * 1000) / rounds;
    };
    const hashUs =
      timeIt(ROUNDS, () => {
        for (const id of ids) {
          const n = state.nodes.get(id)!;
          renderNode(state.view, n.node, state.caCert, n.certPem);
        }
      }) / NODES;
    const yamlUs =
      timeIt(ROUNDS / 4, () => {
        for (const id of ids) configYaml(renderNode(state.view, state.nodes.get(id)!.node, state.caCert, null).config);
      }) / NODES;
    const packUs =
      (await timeAsync(ROUNDS / 4, async () => {
        for (const id of ids) {
          const n = state.nodes.get(id)!;
          await packNodeBundle({ ...renderNode(state.view, n.node, state.caCert, n.certPem), caCert: state.caCert!, hostCert: n.certPem! });
        }
      })) / NODES;
    const loadUs = timeIt(ROUNDS, () => loadCluster(store.reader, cluster.id));
    const writeUs = timeIt(ROUNDS, () => store.writer.write('bench.bump', (db) => bumpConfigVersion(db, cluster.id, 'now')));

    console.log(`\nRender: one process, a ${NODES}-node cluster with an uploaded template, ${ROUNDS} rounds.\n`);
    printTable(
      ['step', 'µs', 'per'],
      [
        ['config + content hash (write path)', fmt(hashUs, 1), 'node'],
        ['config + YAML (yaml package, YAML 1.1, sorted keys)', fmt(yamlUs, 1), 'node'],
        ['config + YAML + tar-stream + gzip + sha256 (served, once per node version)', fmt(packUs, 1), 'node'],
        ['read the cluster’s inputs (template cached)', fmt(loadUs, 0), `cluster of ${NODES}`],
        ['write that bumps the cluster (re-render all, no change)', fmt(writeUs, 0), `transaction, ${NODES} nodes`],
      ],
    );
    return true;
  } finally {
    opened.close();
    tmp.remove();
  }
}

if (isEntryPoint(import.meta.url) && !(await runRenderBench())) process.exitCode = 1;
