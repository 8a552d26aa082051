import { stmt, type Db } from '../db/connection.js';
import type { Pki } from './cluster-ca.js';
import { bumpConfigVersion } from './clusters.js';
import { signWithClusterCa } from './enrollment.js';
import { conflict, notFound } from './errors.js';
import type { Store } from './store.js';
import { ipv4ToInt } from './validation.js';

/** One control-plane server's lighthouse for one cluster, as every host's config lists it. */
export interface BuiltinLighthouse {
  server_id: string;
  overlay_ip: string;
  public_host: string;
  port: number;
  cert_fingerprint: string;
  cert_expires_at: string;
  updated_at: string;
}

export interface BuiltinRegistration extends BuiltinLighthouse {
  cert_pem: string;
}

export interface RegisterRequest {
  cluster_id: string;
  server_id: string;
  /** Made on the server that runs the lighthouse; its private half never leaves that server. */
  public_key: string;
  public_host: string;
  port: number;
}

const COLUMNS = 'server_id, overlay_ip, public_host, port, cert_fingerprint, cert_expires_at, updated_at';

export const lighthouseCertName = (serverId: string): string => `nebulagc-lighthouse-${serverId}`;

export function listBuiltinLighthouses(store: Store, clusterId: string): BuiltinLighthouse[] {
  return stmt(store.reader, `SELECT ${COLUMNS} FROM builtin_lighthouses WHERE cluster_id = ? ORDER BY server_id`).all(clusterId) as BuiltinLighthouse[];
}

export function getRegistration(store: Store, clusterId: string, serverId: string): BuiltinRegistration | undefined {
  return stmt(store.reader, `SELECT ${COLUMNS}, cert_pem FROM builtin_lighthouses WHERE cluster_id = ? AND server_id = ?`).get(clusterId, serverId) as
    | BuiltinRegistration
    | undefined;
}

/** Nodes and built-in lighthouses share the overlay network; a node may not take a lighthouse's address. */
export function assertNotBuiltinIp(db: Db, clusterId: string, overlayIp: string | null | undefined): void {
  if (!overlayIp) return;
  const row = stmt(db, 'SELECT server_id FROM builtin_lighthouses WHERE cluster_id = ? AND overlay_ip = ?').get(clusterId, overlayIp) as
    | { server_id: string }
    | undefined;
  if (row) throw conflict(`overlay IP ${overlayIp} belongs to the built-in lighthouse of server "${row.server_id}"`);
}

/**
 * Signs a certificate for a server's lighthouse key and records the server as a lighthouse of
 * the cluster. The server keeps its overlay IP across renewals; a new one comes from the top of
 * the overlay network, below the broadcast address, so it stays clear of the low addresses
 * operators hand to nodes. The IP is chosen before signing (nebula-cert never runs under the
 * write lock) and checked again in the transaction; a race costs a 409 and a retry.
 */
export async function registerBuiltinLighthouse(store: Store, pki: Pki, req: RegisterRequest): Promise<BuiltinLighthouse> {
  const cluster = readCluster(store.reader, req.cluster_id);
  if (!cluster.provide_lighthouse) throw conflict('the cluster does not provide built-in lighthouses');
  if (req.port !== cluster.lighthouse_port) throw conflict(`the cluster's lighthouse port is ${cluster.lighthouse_port}, not ${req.port}`);
  const overlayIp = chooseIp(store.reader, req.cluster_id, req.server_id, cluster.overlay_cidr);
  const { certificate, caCert, issued } = await signWithClusterCa(store, pki, req.cluster_id, {
    publicKey: req.public_key,
    name: lighthouseCertName(req.server_id),
    overlayIp,
    groups: [],
    subnets: [],
  });
  const now = store.now();
  store.writer.write('lighthouse.register', (db) => {
    const current = readCluster(db, req.cluster_id);
    if (current.ca_cert !== caCert) throw conflict('the cluster CA changed while signing; register again');
    if (!current.provide_lighthouse || current.lighthouse_port !== req.port) throw conflict('the cluster changed while signing; register again');
    if (chooseIp(db, req.cluster_id, req.server_id, current.overlay_cidr) !== overlayIp) throw conflict('the overlay IP was taken while signing; register again');
    stmt(db,
      `INSERT INTO builtin_lighthouses (cluster_id, server_id, overlay_ip, public_host, port, cert_pem, cert_fingerprint, cert_expires_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (cluster_id, server_id) DO UPDATE SET overlay_ip = excluded.overlay_ip, public_host = excluded.public_host,
         port = excluded.port, cert_pem = excluded.cert_pem, cert_fingerprint = excluded.cert_fingerprint,
         cert_expires_at = excluded.cert_expires_at, updated_at = excluded.updated_at`,
    ).run(req.cluster_id, req.server_id, overlayIp, req.public_host, req.port, certificate, issued.fingerprint, issued.notAfter, now);
    bumpConfigVersion(db, req.cluster_id, now);
  });
  const row = getRegistration(store, req.cluster_id, req.server_id);
  if (!row) throw notFound('built-in lighthouse');
  const { cert_pem: _pem, ...lighthouse } = row;
  return lighthouse;
}

interface ClusterRow {
  ca_cert: string | null;
  overlay_cidr: string;
  lighthouse_port: number;
  provide_lighthouse: boolean;
}

function readCluster(db: Db, clusterId: string): ClusterRow {
  const row = stmt(db, 'SELECT ca_cert, overlay_cidr, lighthouse_port, provide_lighthouse FROM clusters WHERE id = ?').get(clusterId) as
    | (Omit<ClusterRow, 'provide_lighthouse'> & { provide_lighthouse: number })
    | undefined;
  if (!row) throw notFound('cluster');
  return { ...row, provide_lighthouse: row.provide_lighthouse === 1 };
}

/** The server's current address if no node has taken it since, else the highest free one. */
function chooseIp(db: Db, clusterId: string, serverId: string, cidr: string): string {
  const own = stmt(db, 'SELECT overlay_ip FROM builtin_lighthouses WHERE cluster_id = ? AND server_id = ?').get(clusterId, serverId) as
    | { overlay_ip: string }
    | undefined;
  const taken = new Set(
    (stmt(db,
      `SELECT overlay_ip FROM nodes WHERE cluster_id = ? AND overlay_ip IS NOT NULL
       UNION SELECT overlay_ip FROM builtin_lighthouses WHERE cluster_id = ? AND server_id != ?`,
    ).pluck().all(clusterId, clusterId, serverId) as string[]),
  );
  if (own && !taken.has(own.overlay_ip)) return own.overlay_ip;
  const [net, bits] = cidr.split('/') as [string, string];
  const first = ipv4ToInt(net) + 1;
  for (let n = ipv4ToInt(net) + 2 ** (32 - Number(bits)) - 2; n >= first; n--) {
    const ip = intToIpv4(n);
    if (!taken.has(ip)) return ip;
  }
  throw conflict(`no free overlay IP left in ${cidr} for a built-in lighthouse`);
}

const intToIpv4 = (n: number): string => [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join('.');
