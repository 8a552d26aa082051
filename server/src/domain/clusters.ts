import { stmt, type Db } from '../db/connection.js';
import { conflict, notFound, rethrowUnique } from './errors.js';
import { refreshNodeVersions } from './render/versions.js';
import { open, seal } from './secret-box.js';
import { newId, sqlBool, type Page, type Store } from './store.js';
import { generateToken, hashToken } from './tokens.js';
import type { ClusterCreate, ClusterUpdate } from './validation.js';

export interface Cluster {
  id: string;
  tenant_id: string;
  name: string;
  lighthouse_port: number;
  /** Every control-plane server runs a Nebula lighthouse for the cluster on lighthouse_port. */
  provide_lighthouse: boolean;
  /** The Nebula network; host certificates carry `<overlay_ip>/<prefix>` of it. */
  overlay_cidr: string;
  config_version: number;
  current_bundle_version: number | null;
  ca_cert: string | null;
  has_ca_key: boolean;
  created_at: string;
  updated_at: string;
}

const CA_KEY_PURPOSE = 'cluster-ca-key';
export const DEFAULT_OVERLAY_CIDR = '10.42.0.0/16';

const SELECT = `SELECT id, tenant_id, name, lighthouse_port, provide_lighthouse, overlay_cidr, config_version, current_bundle_version, ca_cert,
  ca_key_encrypted IS NOT NULL AS has_ca_key, created_at, updated_at FROM clusters`;

type Row = Omit<Cluster, 'has_ca_key' | 'provide_lighthouse'> & { has_ca_key: number; provide_lighthouse: number };
const toCluster = (r: Row): Cluster => ({ ...r, has_ca_key: r.has_ca_key === 1, provide_lighthouse: r.provide_lighthouse === 1 });

/**
 * Every change that can alter what a daemon renders bumps this, inside the same transaction.
 * The same transaction re-renders the cluster's nodes, so each node's own version moves only
 * when its output did, and replicas receive the versions instead of rendering on apply.
 */
export function bumpConfigVersion(db: Db, clusterId: string, now: string): number {
  const row = stmt(db, 'UPDATE clusters SET config_version = config_version + 1, updated_at = ? WHERE id = ? RETURNING config_version')
    .get(now, clusterId) as { config_version: number } | undefined;
  if (!row) throw notFound('cluster');
  refreshNodeVersions(db, clusterId);
  return row.config_version;
}

/**
 * Stores a cluster with the CA it is given, or none. The API and the CLI go through
 * createClusterWithCa (cluster-ca.ts), which makes the CA first.
 */
export function createCluster(store: Store, input: ClusterCreate): { cluster: Cluster; token: string } {
  const token = generateToken('cluster');
  const id = newId();
  const now = store.now();
  const sealedKey = input.ca_key ? sealCaKey(store, input.ca_key) : null;
  try {
    store.writer.write('cluster.create', (db) => {
      const tenant = stmt(db, 'SELECT 1 FROM tenants WHERE id = ?').get(input.tenant_id);
      if (!tenant) throw notFound('tenant');
      const port = input.lighthouse_port ?? 4242;
      if (input.provide_lighthouse) assertLighthousePortFree(db, id, port);
      stmt(db, 
        `INSERT INTO clusters (id, tenant_id, name, token_hash, lighthouse_port, provide_lighthouse, overlay_cidr, ca_cert, ca_key_encrypted, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        id,
        input.tenant_id,
        input.name,
        hashToken(store.secret, token),
        port,
        sqlBool(input.provide_lighthouse ?? false),
        input.overlay_cidr ?? DEFAULT_OVERLAY_CIDR,
        input.ca_cert ?? null,
        sealedKey,
        now,
        now,
      );
    });
  } catch (err) {
    rethrowUnique(err, `tenant already has a cluster named "${input.name}"`);
  }
  return { cluster: getCluster(store, id), token };
}

export function getCluster(store: Store, id: string): Cluster {
  const row = stmt(store.reader, `${SELECT} WHERE id = ?`).get(id) as Row | undefined;
  if (!row) throw notFound('cluster');
  return toCluster(row);
}

export function listClusters(store: Store, filter: { tenant_id?: string | undefined }, page: Page): Cluster[] {
  const rows = filter.tenant_id
    ? stmt(store.reader, `${SELECT} WHERE tenant_id = ? ORDER BY name LIMIT ? OFFSET ?`)
        .all(filter.tenant_id, page.limit, page.offset)
    : stmt(store.reader, `${SELECT} ORDER BY tenant_id, name LIMIT ? OFFSET ?`).all(page.limit, page.offset);
  return (rows as Row[]).map(toCluster);
}

/**
 * Turns built-in lighthouses on or off, or moves them to another UDP port. Turning them off
 * drops every server's registration at once (their certificates stay valid but nothing
 * advertises them); a new port is carried into the registrations here, since the port is not
 * in the certificate.
 */
export function updateCluster(store: Store, id: string, input: ClusterUpdate): Cluster {
  const now = store.now();
  store.writer.write('cluster.update', (db) => {
    const before = stmt(db, 'SELECT lighthouse_port, provide_lighthouse FROM clusters WHERE id = ?').get(id) as
      | { lighthouse_port: number; provide_lighthouse: number }
      | undefined;
    if (!before) throw notFound('cluster');
    const port = input.lighthouse_port ?? before.lighthouse_port;
    const provide = input.provide_lighthouse ?? before.provide_lighthouse === 1;
    if (provide) assertLighthousePortFree(db, id, port);
    stmt(db, 'UPDATE clusters SET lighthouse_port = ?, provide_lighthouse = ?, updated_at = ? WHERE id = ?').run(port, sqlBool(provide), now, id);
    if (!provide) stmt(db, 'DELETE FROM builtin_lighthouses WHERE cluster_id = ?').run(id);
    else stmt(db, 'UPDATE builtin_lighthouses SET port = ?, updated_at = ? WHERE cluster_id = ? AND port != ?').run(port, now, id, port);
    bumpConfigVersion(db, id, now);
  });
  return getCluster(store, id);
}

/** Every control-plane server listens for every such cluster on the same host, so two must not share a port. */
function assertLighthousePortFree(db: Db, clusterId: string, port: number): void {
  const other = stmt(db, 'SELECT name FROM clusters WHERE provide_lighthouse = 1 AND lighthouse_port = ? AND id != ?').get(port, clusterId) as
    | { name: string }
    | undefined;
  if (other) throw conflict(`cluster "${other.name}" already runs its built-in lighthouses on UDP port ${port}`);
}

export function deleteCluster(store: Store, id: string): void {
  store.writer.write('cluster.delete', (db) => {
    if (stmt(db, 'DELETE FROM clusters WHERE id = ?').run(id).changes === 0) throw notFound('cluster');
  });
}

export function rotateClusterToken(store: Store, id: string): string {
  const token = generateToken('cluster');
  store.writer.write('cluster.rotate-token', (db) => {
    const r = stmt(db, 'UPDATE clusters SET token_hash = ?, updated_at = ? WHERE id = ?')
      .run(hashToken(store.secret, token), store.now(), id);
    if (r.changes === 0) throw notFound('cluster');
  });
  return token;
}

/** The CA key as stored: encrypted under a key derived from the server secret. */
export const sealCaKey = (store: Store, key: string): Buffer => seal(store.secret, CA_KEY_PURPOSE, Buffer.from(key, 'utf8'));

/** The CA private key in the clear, for signing. Never returned by the API. */
export function readCaKey(store: Store, id: string): string | null {
  const row = stmt(store.reader, 'SELECT ca_key_encrypted FROM clusters WHERE id = ?').get(id) as
    | { ca_key_encrypted: Buffer | null }
    | undefined;
  if (!row) throw notFound('cluster');
  return row.ca_key_encrypted ? open(store.secret, CA_KEY_PURPOSE, row.ca_key_encrypted).toString('utf8') : null;
}
