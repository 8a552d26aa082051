import { stmt, type Db } from '../db/connection.js';
import { revokeCert } from './blocklist.js';
import { assertNotBuiltinIp } from './builtin-lighthouses.js';
import { bumpConfigVersion } from './clusters.js';
import { notFound, rethrowUnique } from './errors.js';
import { newId, sqlBool, type Page, type Store } from './store.js';
import { generateToken, hashToken } from './tokens.js';
import type { NodeCreate, NodeUpdate } from './validation.js';

export interface Node {
  id: string;
  cluster_id: string;
  name: string;
  is_admin: boolean;
  mtu: number;
  routes: string[];
  is_lighthouse: boolean;
  public_ip: string | null;
  lighthouse_port: number | null;
  is_relay: boolean;
  overlay_ip: string | null;
  /** Nebula groups its certificate carries. */
  groups: string[];
  /** The current certificate (from enrollment), or null until the node enrolls. */
  cert_fingerprint: string | null;
  cert_expires_at: string | null;
  last_seen_at: string | null;
  created_at: string;
  updated_at: string;
}

export interface NodeFilter {
  name?: string | undefined;
  is_admin?: boolean | undefined;
  is_lighthouse?: boolean | undefined;
  is_relay?: boolean | undefined;
}

interface Row {
  id: string;
  cluster_id: string;
  name: string;
  is_admin: number;
  mtu: number;
  routes: string;
  is_lighthouse: number;
  public_ip: string | null;
  lighthouse_port: number | null;
  is_relay: number;
  overlay_ip: string | null;
  groups: string;
  cert_fingerprint: string | null;
  cert_expires_at: string | null;
  last_seen_at: string | null;
  created_at: string;
  updated_at: string;
}

const COLUMNS = `id, cluster_id, name, is_admin, mtu, routes, is_lighthouse, public_ip, lighthouse_port, is_relay,
  overlay_ip, groups, cert_fingerprint, cert_expires_at, last_seen_at, created_at, updated_at`;

export const toNode = (r: Row): Node => ({
  ...r,
  is_admin: r.is_admin === 1,
  is_lighthouse: r.is_lighthouse === 1,
  is_relay: r.is_relay === 1,
  routes: JSON.parse(r.routes) as string[],
  groups: JSON.parse(r.groups) as string[],
});

const uniqueMessage = 'another node in this cluster already has that name or overlay IP';

export function createNode(store: Store, clusterId: string, input: NodeCreate): { node: Node; token: string } {
  const token = generateToken('node');
  const id = newId();
  const now = store.now();
  try {
    store.writer.write('node.create', (db) => {
      assertNotBuiltinIp(db, clusterId, input.overlay_ip);
      stmt(db, 
        `INSERT INTO nodes (id, cluster_id, name, token_hash, is_admin, mtu, routes, overlay_ip, public_ip, groups, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        id,
        clusterId,
        input.name,
        hashToken(store.secret, token),
        sqlBool(input.is_admin ?? false),
        input.mtu ?? 1300,
        JSON.stringify(input.routes ?? []),
        input.overlay_ip ?? null,
        input.public_ip ?? null,
        JSON.stringify(input.groups ?? []),
        now,
        now,
      );
      bumpConfigVersion(db, clusterId, now);
    });
  } catch (err) {
    rethrowUnique(err, uniqueMessage);
  }
  return { node: getNode(store, clusterId, id), token };
}

/** Looks a node up within one cluster only: another cluster's node is simply not found. */
export function getNode(store: Store, clusterId: string, id: string): Node {
  const row = stmt(store.reader, `SELECT ${COLUMNS} FROM nodes WHERE id = ? AND cluster_id = ?`).get(id, clusterId) as
    | Row
    | undefined;
  if (!row) throw notFound('node');
  return toNode(row);
}

export function listNodes(store: Store, clusterId: string, filter: NodeFilter, page: Page): Node[] {
  const where = ['cluster_id = ?'];
  const args: (string | number)[] = [clusterId];
  if (filter.name !== undefined) (where.push('name = ?'), args.push(filter.name));
  if (filter.is_admin !== undefined) (where.push('is_admin = ?'), args.push(sqlBool(filter.is_admin)));
  if (filter.is_lighthouse !== undefined) (where.push('is_lighthouse = ?'), args.push(sqlBool(filter.is_lighthouse)));
  if (filter.is_relay !== undefined) (where.push('is_relay = ?'), args.push(sqlBool(filter.is_relay)));
  const rows = stmt(store.reader, `SELECT ${COLUMNS} FROM nodes WHERE ${where.join(' AND ')} ORDER BY name LIMIT ? OFFSET ?`)
    .all(...args, page.limit, page.offset) as Row[];
  return rows.map(toNode);
}

export function updateNode(store: Store, clusterId: string, id: string, input: NodeUpdate): Node {
  const sets: string[] = [];
  const args: (string | number | null)[] = [];
  if (input.name !== undefined) (sets.push('name = ?'), args.push(input.name));
  if (input.mtu !== undefined) (sets.push('mtu = ?'), args.push(input.mtu));
  if (input.routes !== undefined) (sets.push('routes = ?'), args.push(JSON.stringify(input.routes)));
  if (input.overlay_ip !== undefined) (sets.push('overlay_ip = ?'), args.push(input.overlay_ip));
  if (input.public_ip !== undefined) (sets.push('public_ip = ?'), args.push(input.public_ip));
  if (input.groups !== undefined) (sets.push('groups = ?'), args.push(JSON.stringify(input.groups)));
  const now = store.now();
  try {
    store.writer.write('node.update', (db) => {
      const before = stmt(db, 'SELECT name, overlay_ip, groups, cert_fingerprint, cert_expires_at FROM nodes WHERE id = ? AND cluster_id = ?')
        .get(id, clusterId) as CertIdentity | undefined;
      if (!before) throw notFound('node');
      assertNotBuiltinIp(db, clusterId, input.overlay_ip);
      stmt(db, `UPDATE nodes SET ${sets.join(', ')}, updated_at = ? WHERE id = ? AND cluster_id = ?`).run(...args, now, id, clusterId);
      if (identityChanged(before, input)) dropCert(db, clusterId, id, before, now);
      bumpConfigVersion(db, clusterId, now);
    });
  } catch (err) {
    rethrowUnique(err, uniqueMessage);
  }
  return getNode(store, clusterId, id);
}

/** Deleting a node revokes its certificate: it goes on the cluster's blocklist in the same transaction. */
export function deleteNode(store: Store, clusterId: string, id: string): void {
  const now = store.now();
  store.writer.write('node.delete', (db) => {
    const gone = stmt(db, 'DELETE FROM nodes WHERE id = ? AND cluster_id = ? RETURNING name, cert_fingerprint, cert_expires_at')
      .get(id, clusterId) as Omit<CertIdentity, 'overlay_ip' | 'groups'> | undefined;
    if (!gone) throw notFound('node');
    if (gone.cert_fingerprint && gone.cert_expires_at) {
      revokeCert(db, clusterId, { fingerprint: gone.cert_fingerprint, expires_at: gone.cert_expires_at, node_id: id, node_name: gone.name }, 'deleted', now);
    }
    bumpConfigVersion(db, clusterId, now);
  });
}

/** What a node's certificate asserts about it, and which certificate that is. */
interface CertIdentity {
  name: string;
  overlay_ip: string | null;
  groups: string;
  cert_fingerprint: string | null;
  cert_expires_at: string | null;
}

/** A new name, IP or groups makes the node's certificate a lie; routes only widen or narrow what it may relay. */
function identityChanged(before: CertIdentity, input: NodeUpdate): boolean {
  return (
    (input.name !== undefined && input.name !== before.name) ||
    (input.overlay_ip !== undefined && input.overlay_ip !== before.overlay_ip) ||
    (input.groups !== undefined && JSON.stringify(input.groups) !== before.groups)
  );
}

/**
 * Revokes a certificate that no longer matches its node, so that, for instance, the old IP can
 * be given to another node without the old certificate still claiming it. The node enrolls again.
 */
function dropCert(db: Db, clusterId: string, id: string, before: CertIdentity, now: string): void {
  if (!before.cert_fingerprint || !before.cert_expires_at) return;
  revokeCert(db, clusterId, { fingerprint: before.cert_fingerprint, expires_at: before.cert_expires_at, node_id: id, node_name: before.name }, 'changed', now);
  stmt(db, 'UPDATE nodes SET cert_pem = NULL, cert_fingerprint = NULL, cert_expires_at = NULL WHERE id = ?').run(id);
}

export function rotateNodeToken(store: Store, clusterId: string, id: string): string {
  const token = generateToken('node');
  store.writer.write('node.rotate-token', (db) => {
    const r = stmt(db, 'UPDATE nodes SET token_hash = ?, updated_at = ? WHERE id = ? AND cluster_id = ?')
      .run(hashToken(store.secret, token), store.now(), id, clusterId);
    if (r.changes === 0) throw notFound('node');
  });
  return token;
}

/** The cluster a node belongs to, for callers (the operator) not bound to one cluster. */
export function clusterOfNode(store: Store, id: string): string {
  const row = stmt(store.reader, 'SELECT cluster_id FROM nodes WHERE id = ?').get(id) as { cluster_id: string } | undefined;
  if (!row) throw notFound('node');
  return row.cluster_id;
}
