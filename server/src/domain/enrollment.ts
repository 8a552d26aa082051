import { stmt } from '../db/connection.js';
import { revokeCert } from './blocklist.js';
import type { Pki } from './cluster-ca.js';
import { bumpConfigVersion, readCaKey } from './clusters.js';
import { conflict, invalid, notFound } from './errors.js';
import { NebulaCertError, type CertInfo, type SignRequest } from './nebula-cert.js';
import type { Store } from './store.js';
import { cidrContains } from './validation.js';

export interface Enrollment {
  certificate: string;
  ca_certificate: string;
  fingerprint: string;
  expires_at: string;
}

interface NodeRow {
  name: string;
  overlay_ip: string | null;
  groups: string;
  routes: string;
  cert_pem: string | null;
  cert_fingerprint: string | null;
  cert_expires_at: string | null;
}

const NODE = 'SELECT name, overlay_ip, groups, routes, cert_pem, cert_fingerprint, cert_expires_at FROM nodes WHERE id = ? AND cluster_id = ?';

/**
 * Signs a host certificate for a node's own public key: its name, overlay IP (with the
 * cluster network's prefix), groups, and its advertised routes as `subnets` (Nebula drops
 * traffic from a peer's unsafe routes unless its certificate carries them).
 *
 * Renewal replaces the node's certificate. The old one goes on the blocklist only when it
 * grants something the new one does not (another key, name, IP, groups or subnets): with the
 * same key and the same grants, revoking it protects nothing and would only make every host
 * reload. nebula-cert runs outside the write transaction; the transaction then checks that
 * neither the node nor the CA changed meanwhile.
 */
export async function enrollNode(store: Store, pki: Pki, clusterId: string, nodeId: string, publicKey: string): Promise<Enrollment> {
  const node = stmt(store.reader, NODE).get(nodeId, clusterId) as NodeRow | undefined;
  if (!node) throw notFound('node');
  if (node.overlay_ip === null) throw invalid('the node has no overlay_ip; an operator must set one before it can enroll');
  const { certificate, caCert, issued } = await signWithClusterCa(store, pki, clusterId, {
    publicKey,
    name: node.name,
    overlayIp: node.overlay_ip,
    groups: JSON.parse(node.groups) as string[],
    subnets: JSON.parse(node.routes) as string[],
  });
  const now = store.now();
  const previous = node.cert_pem ? await pki.tool.print(node.cert_pem) : undefined;

  store.writer.write('node.enroll', (db) => {
    const current = stmt(db, NODE).get(nodeId, clusterId) as NodeRow | undefined;
    if (!current) throw notFound('node');
    const caNow = stmt(db, 'SELECT ca_cert FROM clusters WHERE id = ?').get(clusterId) as { ca_cert: string | null };
    const same = (['name', 'overlay_ip', 'groups', 'routes', 'cert_fingerprint'] as const).every((k) => current[k] === node[k]);
    if (!same || caNow.ca_cert !== caCert) throw conflict('the node or its cluster CA changed during enrollment; enroll again');
    if (previous && current.cert_expires_at && !sameGrant(previous, issued)) {
      revokeCert(db, clusterId, { fingerprint: previous.fingerprint, expires_at: current.cert_expires_at, node_id: nodeId, node_name: current.name }, 'reenrolled', now);
    }
    stmt(db, 'UPDATE nodes SET cert_pem = ?, cert_fingerprint = ?, cert_expires_at = ?, updated_at = ? WHERE id = ?')
      .run(certificate, issued.fingerprint, issued.notAfter, now, nodeId);
    // The node's rendered bundle carries its host.crt, and perhaps the blocklist changed.
    bumpConfigVersion(db, clusterId, now);
  });
  return { certificate, ca_certificate: caCert, fingerprint: issued.fingerprint, expires_at: issued.notAfter };
}

export interface ClusterSignRequest {
  publicKey: string;
  name: string;
  /** Without prefix; the certificate gets the cluster network's. */
  overlayIp: string;
  groups: string[];
  subnets: string[];
}

export interface ClusterSigned {
  certificate: string;
  /** The CA that signed it, as read before signing: the write transaction checks it is still current. */
  caCert: string;
  issued: CertInfo;
}

/**
 * Signs a host certificate with the cluster's CA, for nodes and built-in lighthouses alike. The
 * lifetime is NEBULAGC_CERT_LIFETIME, cut short so it never outlives the CA. Runs nebula-cert,
 * so never inside a write transaction.
 */
export async function signWithClusterCa(store: Store, pki: Pki, clusterId: string, req: ClusterSignRequest): Promise<ClusterSigned> {
  const cluster = stmt(store.reader, 'SELECT ca_cert, overlay_cidr FROM clusters WHERE id = ?').get(clusterId) as
    | { ca_cert: string | null; overlay_cidr: string }
    | undefined;
  if (!cluster) throw notFound('cluster');
  if (!cidrContains(cluster.overlay_cidr, req.overlayIp)) {
    throw invalid(`the overlay_ip ${req.overlayIp} is outside the cluster's overlay network ${cluster.overlay_cidr}`);
  }
  const caKey = readCaKey(store, clusterId);
  if (cluster.ca_cert === null || caKey === null) {
    throw conflict('the cluster has no CA key; the operator can create one with POST /api/v1/clusters/{id}/rotate-ca');
  }
  const ca = await pki.tool.print(cluster.ca_cert).catch((err: unknown) => {
    if (err instanceof NebulaCertError) throw conflict(`the cluster CA certificate is unusable (${err.message}); the operator must rotate it`);
    throw err;
  });
  const remainingS = Math.floor((Date.parse(ca.notAfter) - Date.parse(store.now())) / 1000);
  if (remainingS <= 1) throw conflict('the cluster CA has expired; the operator must rotate it');
  const certificate = await sign(pki, {
    caCert: cluster.ca_cert,
    caKey,
    publicKey: req.publicKey,
    name: req.name,
    ip: `${req.overlayIp}/${cluster.overlay_cidr.split('/')[1]}`,
    groups: req.groups,
    subnets: req.subnets,
    // A certificate cannot outlive its CA; 0 asks nebula-cert for "until just before the CA expires".
    durationS: pki.certLifetimeS < remainingS ? pki.certLifetimeS : 0,
  });
  return { certificate, caCert: cluster.ca_cert, issued: await pki.tool.print(certificate) };
}

async function sign(pki: Pki, req: SignRequest): Promise<string> {
  try {
    return await pki.tool.signHost(req);
  } catch (err) {
    if (!(err instanceof NebulaCertError)) throw err;
    if (/in-pub/.test(err.message)) throw invalid('public_key is not a valid Nebula X25519 public key (make one with nebula-cert keygen)');
    if (/constraints violated/.test(err.message)) throw invalid(`the cluster CA does not allow this certificate: ${err.message}`);
    throw err;
  }
}

const sorted = (a: string[]): string => JSON.stringify([...a].sort());

/** Whether two certificates give their holder exactly the same rights. */
function sameGrant(a: CertInfo, b: CertInfo): boolean {
  return (
    a.publicKey === b.publicKey &&
    a.issuer === b.issuer &&
    a.name === b.name &&
    sorted(a.ips) === sorted(b.ips) &&
    sorted(a.groups) === sorted(b.groups) &&
    sorted(a.subnets) === sorted(b.subnets)
  );
}
