import { stmt } from '../../db/connection.js';
import { DomainError, notFound } from '../errors.js';
import { memo, type Store } from '../store.js';
import { packNodeBundle, type NodeBundle } from './bundle.js';
import { loadCluster, renderOne } from './versions.js';

export interface NodeConfigState {
  node_id: string;
  cluster_id: string;
  /** The node's rendered-config version: moves exactly when its bundle's content does. */
  version: number;
  /** The hash of the node's rendered content (not of the archive); null until first rendered. */
  config_sha256: string | null;
}

/** A node's current version, answered from memory until the database changes. */
export function nodeConfigState(store: Store, nodeId: string): NodeConfigState {
  return memo(store, `node-config:${nodeId}`, () => {
    const row = stmt(store.reader, 'SELECT id AS node_id, cluster_id, config_index AS version, config_sha256 FROM nodes WHERE id = ?').get(nodeId) as
      | NodeConfigState
      | undefined;
    if (!row) throw notFound('node');
    return row;
  });
}

export interface ServedBundle extends NodeBundle {
  version: number;
}

const MAX_CACHED = 20_000;
const caches = new WeakMap<Store, Map<string, { version: number; bundle: Promise<ServedBundle> }>>();

/**
 * The node's bundle at its current version. A (node, version) pair always renders to the same
 * bytes, so the archive is built once per pair (concurrent downloads share the build) and kept
 * until the node's version moves past it; the cluster's inputs are read once per database
 * change, however many nodes ask.
 */
export function nodeBundle(store: Store, nodeId: string): Promise<ServedBundle> {
  const state = nodeConfigState(store, nodeId);
  let cache = caches.get(store);
  if (!cache) caches.set(store, (cache = new Map()));
  const hit = cache.get(nodeId);
  if (hit && hit.version === state.version) return hit.bundle;
  const cluster = memo(store, `render-cluster:${state.cluster_id}`, () => loadCluster(store.reader, state.cluster_id));
  const render = cluster && renderOne(cluster, nodeId);
  if (!render) throw notFound('node');
  if (render.hostCert === null || render.caCert === null) {
    throw new DomainError('NOT_ENROLLED', 'the node has not enrolled yet; POST its public key to /api/v1/enroll first');
  }
  const entry = {
    version: state.version,
    bundle: packNodeBundle({ ...render, caCert: render.caCert, hostCert: render.hostCert }).then((b) => ({ ...b, version: state.version })),
  };
  entry.bundle.catch(() => {
    if (cache.get(nodeId) === entry) cache.delete(nodeId);
  });
  cache.delete(nodeId);
  cache.set(nodeId, entry);
  if (cache.size > MAX_CACHED) cache.delete(cache.keys().next().value!);
  return entry.bundle;
}
