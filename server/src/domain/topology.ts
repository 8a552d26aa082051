import { stmt, type Db } from '../db/connection.js';
import { listBuiltinLighthouses, type BuiltinLighthouse } from './builtin-lighthouses.js';
import { bumpConfigVersion } from './clusters.js';
import { invalid, notFound } from './errors.js';
import type { Store } from './store.js';
import type { LighthouseAssign } from './validation.js';

export interface Lighthouse {
  node_id: string;
  name: string;
  overlay_ip: string | null;
  public_ip: string;
  port: number;
}

export interface Relay {
  node_id: string;
  name: string;
  overlay_ip: string | null;
}

export interface Topology {
  config_version: number;
  lighthouses: Lighthouse[];
  relays: Relay[];
  builtin_lighthouses: Pick<BuiltinLighthouse, 'server_id' | 'overlay_ip' | 'public_host' | 'port'>[];
}

export function getTopology(store: Store, clusterId: string): Topology {
  const cluster = stmt(store.reader, 'SELECT config_version, lighthouse_port FROM clusters WHERE id = ?')
    .get(clusterId) as { config_version: number; lighthouse_port: number } | undefined;
  if (!cluster) throw notFound('cluster');
  const lighthouses = stmt(store.reader, 
      `SELECT id AS node_id, name, overlay_ip, public_ip, coalesce(lighthouse_port, ?) AS port
       FROM nodes WHERE cluster_id = ? AND is_lighthouse = 1 ORDER BY name`,
    )
    .all(cluster.lighthouse_port, clusterId) as Lighthouse[];
  const relays = stmt(store.reader, 'SELECT id AS node_id, name, overlay_ip FROM nodes WHERE cluster_id = ? AND is_relay = 1 ORDER BY name')
    .all(clusterId) as Relay[];
  const builtin_lighthouses = listBuiltinLighthouses(store, clusterId).map(({ server_id, overlay_ip, public_host, port }) => ({
    server_id,
    overlay_ip,
    public_host,
    port,
  }));
  return { config_version: cluster.config_version, lighthouses, relays, builtin_lighthouses };
}

/** Applies one topology change to a node of the cluster and bumps the cluster's config version. */
function changeNode(store: Store, label: string, clusterId: string, nodeId: string, change: (db: Db) => void): void {
  const now = store.now();
  store.writer.write(label, (db) => {
    const node = stmt(db, 'SELECT overlay_ip FROM nodes WHERE id = ? AND cluster_id = ?').get(nodeId, clusterId) as
      | { overlay_ip: string | null }
      | undefined;
    if (!node) throw notFound('node');
    if (node.overlay_ip === null) throw invalid('node has no overlay_ip; set one before giving it a topology role');
    change(db);
    stmt(db, 'UPDATE nodes SET updated_at = ? WHERE id = ?').run(now, nodeId);
    bumpConfigVersion(db, clusterId, now);
  });
}

export function assignLighthouse(store: Store, clusterId: string, input: LighthouseAssign): Topology {
  changeNode(store, 'topology.lighthouse.assign', clusterId, input.node_id, (db) => {
    stmt(db, 'UPDATE nodes SET is_lighthouse = 1, public_ip = ?, lighthouse_port = ? WHERE id = ?').run(
      input.public_ip,
      input.port ?? null,
      input.node_id,
    );
  });
  return getTopology(store, clusterId);
}

export function unassignLighthouse(store: Store, clusterId: string, nodeId: string): Topology {
  changeNode(store, 'topology.lighthouse.unassign', clusterId, nodeId, (db) => {
    stmt(db, 'UPDATE nodes SET is_lighthouse = 0, lighthouse_port = NULL WHERE id = ?').run(nodeId);
  });
  return getTopology(store, clusterId);
}

export function setRelay(store: Store, clusterId: string, nodeId: string, isRelay: boolean): Topology {
  changeNode(store, isRelay ? 'topology.relay.assign' : 'topology.relay.unassign', clusterId, nodeId, (db) => {
    stmt(db, 'UPDATE nodes SET is_relay = ? WHERE id = ?').run(isRelay ? 1 : 0, nodeId);
  });
  return getTopology(store, clusterId);
}
