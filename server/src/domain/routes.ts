import { stmt } from '../db/connection.js';
import { bumpConfigVersion } from './clusters.js';
import { notFound } from './errors.js';
import type { Store } from './store.js';

export interface NodeRoutes {
  node_id: string;
  name: string;
  overlay_ip: string | null;
  routes: string[];
}

export function getNodeRoutes(store: Store, clusterId: string, nodeId: string): NodeRoutes {
  const row = stmt(store.reader, 'SELECT id AS node_id, name, overlay_ip, routes FROM nodes WHERE id = ? AND cluster_id = ?')
    .get(nodeId, clusterId) as (Omit<NodeRoutes, 'routes'> & { routes: string }) | undefined;
  if (!row) throw notFound('node');
  return { ...row, routes: JSON.parse(row.routes) as string[] };
}

/** Replaces the routes a node advertises. Other nodes render them, so the cluster version moves. */
export function replaceNodeRoutes(store: Store, clusterId: string, nodeId: string, routes: string[]): NodeRoutes {
  const unique = [...new Set(routes)];
  const now = store.now();
  store.writer.write('routes.replace', (db) => {
    const r = stmt(db, 'UPDATE nodes SET routes = ?, updated_at = ? WHERE id = ? AND cluster_id = ?')
      .run(JSON.stringify(unique), now, nodeId, clusterId);
    if (r.changes === 0) throw notFound('node');
    bumpConfigVersion(db, clusterId, now);
  });
  return getNodeRoutes(store, clusterId, nodeId);
}

/** Every node in the cluster that advertises at least one route. */
export function listClusterRoutes(store: Store, clusterId: string): NodeRoutes[] {
  const rows = stmt(store.reader, 
      `SELECT id AS node_id, name, overlay_ip, routes FROM nodes
       WHERE cluster_id = ? AND routes <> '[]' ORDER BY name`,
    )
    .all(clusterId) as (Omit<NodeRoutes, 'routes'> & { routes: string })[];
  return rows.map((r) => ({ ...r, routes: JSON.parse(r.routes) as string[] }));
}
