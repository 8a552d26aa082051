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
}

/** A node's current version, answered from memory until the database changes. */
export function nodeConfigState(store: Store, nodeId: string): NodeConfigState {
  return memo(store, `node-config:${nodeId}`, () => {
    const row = stmt(store.reader, 'SELECT id AS node_id, cluster_id, config_index AS version FROM nodes WHERE id = ?').get(nodeId) as
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
const caches = new WeakMap<Store, Map<string, ServedBundle>>();

/**
 * The node's bundle at its current version. A (node, version) pair always renders to the same
 * bytes, so the archive is built once per pair and kept until the node's version moves past it;
 * the cluster's inputs are read once per database change, however many nodes ask.
 */
export function nodeBundle(store: Store, nodeId: string): ServedBundle {
  const state = nodeConfigState(store, nodeId);
  let cache = caches.get(store);
  if (!cache) caches.set(store, (cache = new Map()));
  const hit = cache.get(nodeId);
  if (hit && hit.version === state.version) return hit;
  const cluster = memo(store, `render-cluster:${state.cluster_id}`, () => loadCluster(store.reader, state.cluster_id));
  const render = cluster && renderOne(cluster, nodeId);
  if (!render) throw notFound('node');
  if (render.hostCert === null || render.caCert === null) {
    throw new DomainError('NOT_ENROLLED', 'the node has not enrolled yet; POST its public key to /api/v1/enroll first');
  }
  const served: ServedBundle = { ...packNodeBundle({ ...render, caCert: render.caCert, hostCert: render.hostCert }), version: state.version };
  cache.delete(nodeId);
  cache.set(nodeId, served);
  if (cache.size > MAX_CACHED) cache.delete(cache.keys().next().value!);
  return served;
}
