import { stmt, type Db } from '../db/connection.js';
import { notFound } from './errors.js';
import type { Store } from './store.js';

/** Why a certificate stopped being trusted before its expiry. */
export type RevokeReason = 'deleted' | 'reenrolled' | 'changed';

export interface RevokedCert {
  fingerprint: string;
  node_id: string;
  node_name: string;
  reason: RevokeReason;
  expires_at: string;
  revoked_at: string;
}

export interface Blocklist {
  cluster_id: string;
  /** What goes into Nebula's `pki.blocklist`. */
  fingerprints: string[];
  entries: RevokedCert[];
}

/**
 * Puts a node's certificate on its cluster's blocklist. Runs inside the caller's write
 * transaction, which also bumps config_version. A certificate that has already expired is left
 * out (Nebula refuses it anyway), and entries that have expired since are pruned here, so the
 * list only changes together with a version bump.
 */
export function revokeCert(
  db: Db,
  clusterId: string,
  cert: { fingerprint: string; expires_at: string; node_id: string; node_name: string },
  reason: RevokeReason,
  now: string,
): void {
  stmt(db, 'DELETE FROM revoked_certs WHERE cluster_id = ? AND expires_at <= ?').run(clusterId, now);
  if (cert.expires_at <= now) return;
  stmt(db,
    `INSERT OR IGNORE INTO revoked_certs (cluster_id, fingerprint, node_id, node_name, reason, expires_at, revoked_at)
     VALUES (?, ?, ?, ?, ?, ?, ?)`,
  ).run(clusterId, cert.fingerprint, cert.node_id, cert.node_name, reason, cert.expires_at, now);
}

/** After a CA rotation nothing the old CA signed is trusted, so its revocations mean nothing. */
export function clearBlocklist(db: Db, clusterId: string): void {
  stmt(db, 'DELETE FROM revoked_certs WHERE cluster_id = ?').run(clusterId);
}

export function getBlocklist(store: Store, clusterId: string): Blocklist {
  if (!stmt(store.reader, 'SELECT 1 FROM clusters WHERE id = ?').get(clusterId)) throw notFound('cluster');
  const entries = stmt(store.reader,
    `SELECT fingerprint, node_id, node_name, reason, expires_at, revoked_at FROM revoked_certs
     WHERE cluster_id = ? ORDER BY fingerprint`,
  ).all(clusterId) as RevokedCert[];
  return { cluster_id: clusterId, fingerprints: entries.map((e) => e.fingerprint), entries };
}
