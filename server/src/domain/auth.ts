import { stmt } from '../db/connection.js';
import { hashesEqual, hashToken } from './tokens.js';
import { forbidden, invalid } from './errors.js';
import type { Store } from './store.js';

/** Who is calling, as proven by a token. */
export type Principal =
  | { kind: 'operator'; id: string }
  | { kind: 'node'; id: string; clusterId: string; tenantId: string; isAdmin: boolean }
  | { kind: 'cluster'; clusterId: string; tenantId: string };

export type Presented = { kind: 'bearer' | 'node' | 'cluster'; token: string };

/**
 * Resolves a presented token to a principal, or undefined. The lookup is by HMAC digest (an
 * attacker cannot steer it), and the stored digest is then compared in constant time.
 */
export function authenticate(store: Store, presented: Presented): Principal | undefined {
  const digest = hashToken(store.secret, presented.token);
  if (presented.kind === 'bearer') {
    const op = stmt(store.reader, 'SELECT id, token_hash FROM operator_tokens WHERE token_hash = ?').get(digest) as
      | { id: string; token_hash: string }
      | undefined;
    if (op && hashesEqual(op.token_hash, digest)) return { kind: 'operator', id: op.id };
  }
  if (presented.kind === 'bearer' || presented.kind === 'node') {
    const n = stmt(store.reader, 
        `SELECT n.id, n.cluster_id, n.is_admin, n.token_hash, c.tenant_id
         FROM nodes n JOIN clusters c ON c.id = n.cluster_id WHERE n.token_hash = ?`,
      )
      .get(digest) as
      | { id: string; cluster_id: string; is_admin: number; token_hash: string; tenant_id: string }
      | undefined;
    if (n && hashesEqual(n.token_hash, digest)) {
      return { kind: 'node', id: n.id, clusterId: n.cluster_id, tenantId: n.tenant_id, isAdmin: n.is_admin === 1 };
    }
  }
  if (presented.kind === 'cluster') {
    const c = stmt(store.reader, 'SELECT id, tenant_id, token_hash FROM clusters WHERE token_hash = ?').get(digest) as
      | { id: string; tenant_id: string; token_hash: string }
      | undefined;
    if (c && hashesEqual(c.token_hash, digest)) return { kind: 'cluster', clusterId: c.id, tenantId: c.tenant_id };
  }
  return undefined;
}

export function requireOperator(p: Principal): void {
  if (p.kind !== 'operator') throw forbidden('this needs the operator token');
}

export function requireNode(p: Principal): Extract<Principal, { kind: 'node' }> {
  if (p.kind !== 'node') throw forbidden('this needs a node token');
  return p;
}

/**
 * The cluster a request may act on. An operator names it; a node or cluster token is bound to
 * its own, and naming a different one is refused.
 */
export function clusterScope(p: Principal, requested: string | undefined): string {
  if (p.kind === 'operator') {
    if (!requested) throw invalid('cluster_id is required with the operator token');
    return requested;
  }
  if (requested !== undefined && requested !== p.clusterId) throw forbidden('token is not valid for that cluster');
  return p.clusterId;
}

/** Managing nodes and cluster config: the operator, or an admin node of that cluster. */
export function requireClusterAdmin(p: Principal, requested: string | undefined): string {
  if (p.kind === 'cluster' || (p.kind === 'node' && !p.isAdmin)) {
    throw forbidden('this needs an admin node token or the operator token');
  }
  return clusterScope(p, requested);
}

/** Label recorded as a bundle's author and in logs; never the token itself. */
export function describe(p: Principal): string {
  switch (p.kind) {
    case 'operator':
      return 'operator';
    case 'node':
      return `node:${p.id}`;
    case 'cluster':
      return `cluster:${p.clusterId}`;
  }
}

/** Creating a node: the operator or an admin node; the cluster token may enrol plain (non-admin) nodes only. */
export function requireNodeCreator(p: Principal, requested: string | undefined, isAdmin: boolean): string {
  if (p.kind === 'cluster') {
    if (isAdmin) throw forbidden('the cluster token can only create non-admin nodes');
    return clusterScope(p, requested);
  }
  return requireClusterAdmin(p, requested);
}

/**
 * The cluster in which a node is looked up. The operator reaches any node; an admin node or
 * the cluster token reaches its own cluster's nodes; a plain node reaches only itself.
 */
export function nodeReadScope(p: Principal, nodeId: string, clusterOf: (nodeId: string) => string): string {
  if (p.kind === 'operator') return clusterOf(nodeId);
  if (p.kind === 'node' && !p.isAdmin && p.id !== nodeId) throw forbidden('a node token may only read its own node');
  return p.clusterId;
}

/** Changing a node: the operator, or an admin node of the node's cluster. */
export function nodeWriteScope(p: Principal, nodeId: string, clusterOf: (nodeId: string) => string): string {
  if (p.kind === 'operator') return clusterOf(nodeId);
  return requireClusterAdmin(p, undefined);
}

/**
 * Remembers token -> principal until the database changes (see ChangeTracker), so a revoked or
 * rotated token stops working on the next request, while the thousands of daemon polls in
 * between skip the HMAC and the lookup.
 */
export class PrincipalCache {
  private entries = new Map<string, Principal | null>();
  private version = -1;

  constructor(
    private readonly store: Store,
    private readonly maxEntries = 50_000,
  ) {}

  authenticate(presented: Presented): Principal | undefined {
    const version = this.store.changes.current();
    if (version !== this.version || this.entries.size >= this.maxEntries) {
      this.entries.clear();
      this.version = version;
    }
    const key = `${presented.kind}\u0000${presented.token}`;
    let hit = this.entries.get(key);
    if (hit === undefined) {
      hit = authenticate(this.store, presented) ?? null;
      this.entries.set(key, hit);
    }
    return hit ?? undefined;
  }
}
