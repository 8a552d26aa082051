import { stmt } from '../db/connection.js';
import { bumpConfigVersion } from './clusters.js';
import { conflict, notFound } from './errors.js';
import { memo, type Page, type Store } from './store.js';
import type { InspectedBundle } from './bundle-archive.js';

export interface BundleMeta {
  version: number;
  sha256: string;
  size_bytes: number;
  created_by: string;
  created_at: string;
  current: boolean;
}

export interface Bundle extends BundleMeta {
  data: Buffer;
}

export interface ConfigVersion {
  cluster_id: string;
  config_version: number;
  bundle_version: number | null;
  bundle_sha256: string | null;
}

const META = `b.version, b.sha256, b.size_bytes, b.created_by, b.created_at, (b.version = c.current_bundle_version) AS current`;

type MetaRow = Omit<BundleMeta, 'current'> & { current: number };
const toMeta = <T extends MetaRow>(r: T): T & { current: boolean } => ({ ...r, current: r.current === 1 });

/** Stores an already-inspected bundle as the cluster's next version and makes it current. */
export function storeBundle(store: Store, clusterId: string, bundle: InspectedBundle, createdBy: string): BundleMeta {
  const now = store.now();
  const version = store.writer.write('bundle.store', (db) => {
    const next = stmt(db, 'SELECT coalesce(max(version), 0) + 1 AS v FROM config_bundles WHERE cluster_id = ?')
      .get(clusterId) as { v: number };
    stmt(db, 
      `INSERT INTO config_bundles (cluster_id, version, data, sha256, size_bytes, created_by, created_at, config_yml)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(clusterId, next.v, bundle.data, bundle.sha256, bundle.data.length, createdBy, now, bundle.configYml);
    stmt(db, 'UPDATE clusters SET current_bundle_version = ? WHERE id = ?').run(next.v, clusterId);
    bumpConfigVersion(db, clusterId, now);
    return next.v;
  });
  return getBundleMeta(store, clusterId, version);
}

/** Metadata of a given version, or of the current one when `version` is omitted (cached: daemons ask it on every 304). */
export function getBundleMeta(store: Store, clusterId: string, version?: number): BundleMeta {
  return memo(store, `bundle-meta:${clusterId}:${version ?? 'current'}`, () => readBundleMeta(store, clusterId, version));
}

function readBundleMeta(store: Store, clusterId: string, version: number | undefined): BundleMeta {
  const row = stmt(store.reader, 
      `SELECT ${META} FROM config_bundles b JOIN clusters c ON c.id = b.cluster_id
       WHERE b.cluster_id = ? AND b.version = coalesce(?, c.current_bundle_version)`,
    )
    .get(clusterId, version ?? null) as MetaRow | undefined;
  if (!row) throw notFound(version === undefined ? 'current bundle' : 'bundle version');
  return toMeta(row);
}

export function listBundles(store: Store, clusterId: string, page: Page): BundleMeta[] {
  const rows = stmt(store.reader, 
      `SELECT ${META} FROM config_bundles b JOIN clusters c ON c.id = b.cluster_id
       WHERE b.cluster_id = ? ORDER BY b.version DESC LIMIT ? OFFSET ?`,
    )
    .all(clusterId, page.limit, page.offset) as MetaRow[];
  return rows.map(toMeta);
}

/** A given version, or the current one when `version` is omitted. */
export function getBundle(store: Store, clusterId: string, version?: number): Bundle {
  const row = stmt(store.reader, 
      `SELECT ${META}, b.data FROM config_bundles b JOIN clusters c ON c.id = b.cluster_id
       WHERE b.cluster_id = ? AND b.version = coalesce(?, c.current_bundle_version)`,
    )
    .get(clusterId, version ?? null) as (MetaRow & { data: Buffer }) | undefined;
  if (!row) throw notFound(version === undefined ? 'current bundle' : 'bundle version');
  return toMeta(row);
}

export function deleteBundle(store: Store, clusterId: string, version: number): void {
  store.writer.write('bundle.delete', (db) => {
    const c = stmt(db, 'SELECT current_bundle_version AS cur FROM clusters WHERE id = ?').get(clusterId) as
      | { cur: number | null }
      | undefined;
    if (!c) throw notFound('cluster');
    if (c.cur === version) throw conflict('the current bundle version cannot be deleted; upload a newer one first');
    const r = stmt(db, 'DELETE FROM config_bundles WHERE cluster_id = ? AND version = ?').run(clusterId, version);
    if (r.changes === 0) throw notFound('bundle version');
  });
}

/** What every daemon polls: answered from memory until the database changes. */
export function getConfigVersion(store: Store, clusterId: string): ConfigVersion {
  return memo(store, `config-version:${clusterId}`, () => readConfigVersion(store, clusterId));
}

function readConfigVersion(store: Store, clusterId: string): ConfigVersion {
  const row = stmt(store.reader, 
      `SELECT c.id AS cluster_id, c.config_version, c.current_bundle_version AS bundle_version, b.sha256 AS bundle_sha256
       FROM clusters c LEFT JOIN config_bundles b ON b.cluster_id = c.id AND b.version = c.current_bundle_version
       WHERE c.id = ?`,
    )
    .get(clusterId) as ConfigVersion | undefined;
  if (!row) throw notFound('cluster');
  return row;
}
