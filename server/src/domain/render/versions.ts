import { stmt, type Db } from '../../db/connection.js';
import type { Store } from '../store.js';
import { renderNode, type NodeRender } from './bundle.js';
import { renderNodeConfig, viewCluster, type ClusterView, type RenderNode } from './config.js';
import { templateOf } from './template.js';

interface NodeRow {
  id: string;
  overlay_ip: string | null;
  mtu: number;
  routes: string;
  is_lighthouse: number;
  public_ip: string | null;
  lighthouse_port: number | null;
  is_relay: number;
  cert_pem: string | null;
  config_index: number;
  config_sha256: string | null;
}

export interface ClusterRenderState {
  view: ClusterView;
  caCert: string | null;
  nodes: Map<string, { node: RenderNode; certPem: string | null; index: number; contentHash: string | null }>;
}

/** Everything rendering a cluster's nodes needs, read through `db` (the writer inside its transaction, or a reader). */
export function loadCluster(db: Db, clusterId: string): ClusterRenderState | undefined {
  const cluster = stmt(db,
    `SELECT c.lighthouse_port, c.ca_cert, c.current_bundle_version AS bundle_version, c.provide_lighthouse, b.sha256
     FROM clusters c LEFT JOIN config_bundles b ON b.cluster_id = c.id AND b.version = c.current_bundle_version
     WHERE c.id = ?`,
  ).get(clusterId) as
    | { lighthouse_port: number; ca_cert: string | null; bundle_version: number | null; provide_lighthouse: number; sha256: string | null }
    | undefined;
  if (!cluster) return undefined;
  const template = templateOf(
    cluster.bundle_version === null || cluster.sha256 === null
      ? undefined
      : {
          clusterId,
          bundleVersion: cluster.bundle_version,
          sha256: cluster.sha256,
          load: () =>
            stmt(db, 'SELECT config_yml FROM config_bundles WHERE cluster_id = ? AND version = ?')
              .pluck()
              .get(clusterId, cluster.bundle_version) as string | null,
        },
  );
  const rows = stmt(db,
    `SELECT id, overlay_ip, mtu, routes, is_lighthouse, public_ip, lighthouse_port, is_relay, cert_pem, config_index, config_sha256
     FROM nodes WHERE cluster_id = ?`,
  ).all(clusterId) as NodeRow[];
  const blocklist = stmt(db, 'SELECT fingerprint FROM revoked_certs WHERE cluster_id = ?').pluck().all(clusterId) as string[];
  const builtinLighthouses =
    cluster.provide_lighthouse === 1
      ? (stmt(db, 'SELECT overlay_ip, public_host, port FROM builtin_lighthouses WHERE cluster_id = ?').all(clusterId) as {
          overlay_ip: string;
          public_host: string;
          port: number;
        }[])
      : [];
  const nodes: ClusterRenderState['nodes'] = new Map();
  for (const r of rows) {
    const node: RenderNode = {
      id: r.id,
      overlay_ip: r.overlay_ip,
      mtu: r.mtu,
      routes: JSON.parse(r.routes) as string[],
      is_lighthouse: r.is_lighthouse === 1,
      public_ip: r.public_ip,
      lighthouse_port: r.lighthouse_port,
      is_relay: r.is_relay === 1,
    };
    nodes.set(r.id, { node, certPem: r.cert_pem, index: r.config_index, contentHash: r.config_sha256 });
  }
  const view = viewCluster({
    template,
    lighthousePort: cluster.lighthouse_port,
    blocklist,
    nodes: [...nodes.values()].map((n) => n.node),
    builtinLighthouses,
  });
  return { view, caCert: cluster.ca_cert, nodes };
}

/** One node's config and files, for serving (no content hash: the stored version stands for it). */
export function renderOne(state: ClusterRenderState, nodeId: string): Omit<NodeRender, 'contentHash'> | undefined {
  const n = state.nodes.get(nodeId);
  return n && { config: renderNodeConfig(state.view, n.node), caCert: state.caCert, hostCert: n.certPem };
}

/**
 * Re-renders every node of a cluster inside the caller's write transaction and moves the
 * version of exactly those whose rendered content changed. All nodes moved by one call share
 * one new value of the database-wide render index. Returns how many nodes moved.
 */
export function refreshNodeVersions(db: Db, clusterId: string): number {
  const state = loadCluster(db, clusterId);
  if (!state) return 0;
  const moved: [string, string][] = [];
  for (const [id, n] of state.nodes) {
    const hash = renderNode(state.view, n.node, state.caCert, n.certPem).contentHash;
    if (hash !== n.contentHash) moved.push([id, hash]);
  }
  if (moved.length === 0) return 0;
  const index = stmt(db, 'UPDATE render_index SET value = value + 1 WHERE id = 1 RETURNING value').pluck().get() as number;
  const update = stmt(db, 'UPDATE nodes SET config_index = ?, config_sha256 = ? WHERE id = ?');
  for (const [id, hash] of moved) update.run(index, hash, id);
  return moved.length;
}

/**
 * Gives a version to nodes never rendered: those of a database from before per-node versions.
 * Runs where writes happen, at start; returns how many nodes it rendered.
 */
export function renderUnrenderedNodes(store: Store): number {
  const clusters = stmt(store.reader, 'SELECT DISTINCT cluster_id FROM nodes WHERE config_sha256 IS NULL').pluck().all() as string[];
  if (clusters.length === 0) return 0;
  return store.writer.write('render.backfill', (db) => clusters.reduce((n, id) => n + refreshNodeVersions(db, id), 0));
}
