import { generateKeyPairSync } from 'node:crypto';
import { stmt } from '../db/connection.js';
import { clearBlocklist } from './blocklist.js';
import { bumpConfigVersion, createCluster, DEFAULT_OVERLAY_CIDR, getCluster, sealCaKey, type Cluster } from './clusters.js';
import { conflict, invalid } from './errors.js';
import { NebulaCert, NebulaCertError } from './nebula-cert.js';
import type { Store } from './store.js';
import type { ClusterCreate } from './validation.js';

/** The PKI settings of config.ts. */
export interface PkiSettings {
  nebulaCertBin: string;
  caLifetimeS: number;
  certLifetimeS: number;
}

export interface Pki {
  tool: NebulaCert;
  caLifetimeS: number;
  certLifetimeS: number;
}

export const pkiFrom = (s: PkiSettings): Pki => ({
  tool: new NebulaCert({ bin: s.nebulaCertBin }),
  caLifetimeS: s.caLifetimeS,
  certLifetimeS: s.certLifetimeS,
});

/**
 * Creates a cluster with its own Nebula CA. The CA is made by nebula-cert before the write
 * transaction (a process never runs while the write lock is held), restricted to the cluster's
 * overlay network. A CA the operator brings is checked first, so a bad one fails here with a
 * 400 rather than at the first enrollment.
 */
export async function createClusterWithCa(store: Store, pki: Pki, input: ClusterCreate): Promise<{ cluster: Cluster; token: string }> {
  const overlay_cidr = input.overlay_cidr ?? DEFAULT_OVERLAY_CIDR;
  let ca: { cert: string; key: string };
  if (input.ca_cert !== undefined && input.ca_key !== undefined) {
    await checkOwnCa(pki.tool, input.ca_cert, input.ca_key, overlay_cidr);
    ca = { cert: input.ca_cert, key: input.ca_key };
  } else {
    ca = await pki.tool.createCa({ name: caName(input.name), durationS: pki.caLifetimeS, ips: [overlay_cidr] });
  }
  return createCluster(store, { ...input, overlay_cidr, ca_cert: ca.cert, ca_key: ca.key });
}

/**
 * Replaces the cluster's CA with a new one, at once: every node certificate signed by the old
 * CA is dropped (nodes must enroll again), and so is the blocklist, whose entries were all
 * signed by the old CA, which nothing will trust any more. Meant for a compromised or expiring
 * CA; config_version moves so every daemon fetches the new ca.crt.
 */
export async function rotateClusterCa(store: Store, pki: Pki, clusterId: string): Promise<Cluster> {
  const before = getCluster(store, clusterId);
  const ca = await pki.tool.createCa({ name: caName(before.name), durationS: pki.caLifetimeS, ips: [before.overlay_cidr] });
  const sealed = sealCaKey(store, ca.key);
  const now = store.now();
  store.writer.write('cluster.rotate-ca', (db) => {
    const r = stmt(db, 'UPDATE clusters SET ca_cert = ?, ca_key_encrypted = ?, updated_at = ? WHERE id = ? AND ca_cert IS ?')
      .run(ca.cert, sealed, now, clusterId, before.ca_cert);
    if (r.changes === 0) throw conflict('the cluster or its CA changed during the rotation; try again');
    stmt(db, 'UPDATE nodes SET cert_pem = NULL, cert_fingerprint = NULL, cert_expires_at = NULL WHERE cluster_id = ?').run(clusterId);
    clearBlocklist(db, clusterId);
    bumpConfigVersion(db, clusterId, now);
  });
  return getCluster(store, clusterId);
}

const caName = (clusterName: string): string => `nebulagc ${clusterName}`;

/** A trial signature proves the key belongs to the certificate and that the CA allows the cluster's network. */
async function checkOwnCa(tool: NebulaCert, cert: string, key: string, overlayCidr: string): Promise<void> {
  try {
    const info = await tool.print(cert);
    if (!info.isCa) throw invalid('ca_cert is not a CA certificate');
    if (info.notAfter <= new Date().toISOString()) throw invalid('ca_cert has expired');
    const [net, bits] = overlayCidr.split('/') as [string, string];
    const octets = net.split('.');
    octets[3] = String(Number(octets[3]) + 1); // the first host: a network address has host bits zero, and the prefix is at most /30
    await tool.signHost({
      caCert: cert,
      caKey: key,
      publicKey: throwawayPublicKey(),
      name: 'nebulagc-ca-check',
      ip: `${octets.join('.')}/${bits}`,
      groups: [],
      subnets: [],
      durationS: 0,
    });
  } catch (err) {
    if (err instanceof NebulaCertError) throw invalid(`ca_cert/ca_key refused by nebula-cert: ${err.message}`);
    throw err;
  }
}

/** A Nebula X25519 public key whose private half is dropped at once. */
function throwawayPublicKey(): string {
  const der = generateKeyPairSync('x25519').publicKey.export({ format: 'der', type: 'spki' });
  const raw = der.subarray(der.length - 32).toString('base64');
  return `-----BEGIN NEBULA X25519 PUBLIC KEY-----\n${raw}\n-----END NEBULA X25519 PUBLIC KEY-----\n`;
}
