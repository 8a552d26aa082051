import type { HonoRequest, MiddlewareHandler } from 'hono';
import { PrincipalCache, type Presented } from '../../domain/auth.js';
import { DomainError } from '../../domain/errors.js';
import type { Store } from '../../domain/store.js';
import type { AppEnv } from '../context.js';
import type { Metrics } from '../metrics.js';
import { enforce, type RateLimiter } from './rate-limit.js';

function presentedToken(req: HonoRequest): Presented | undefined {
  const node = req.header('x-nebulagc-node-token');
  if (node) return { kind: 'node', token: node };
  const cluster = req.header('x-nebulagc-cluster-token');
  if (cluster) return { kind: 'cluster', token: cluster };
  const auth = req.header('authorization');
  if (auth) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (!m) throw new DomainError('AUTH_INVALID', 'Authorization must be "Bearer <token>"');
    return { kind: 'bearer', token: m[1]! };
  }
  return undefined;
}

/**
 * Every /api/v1 request proves who it is. Node and cluster principals are then held to their
 * own rate limits, so one noisy host or cluster cannot starve the rest.
 */
export const requireAuth = (
  store: Store,
  limits: { node: RateLimiter; cluster: RateLimiter },
  metrics: Metrics,
): MiddlewareHandler<AppEnv> => {
  const principals = new PrincipalCache(store);
  return (c, next) => {
    const presented = presentedToken(c.req);
    if (!presented) throw new DomainError('AUTH_MISSING', 'a token is required (Authorization: Bearer, or X-NebulaGC-Node-Token)');
    if (presented.token.length > 512) throw new DomainError('AUTH_INVALID', 'token is not valid');
    const principal = principals.authenticate(presented);
    if (!principal) throw new DomainError('AUTH_INVALID', 'token is not valid');
    c.set('principal', principal);
    if (principal.kind === 'node') enforce(c, limits.node, 'node', principal.id, metrics);
    if (principal.kind !== 'operator') enforce(c, limits.cluster, 'cluster', principal.clusterId, metrics);
    return next();
  };
};
