import { createHash, timingSafeEqual } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { MiddlewareHandler } from 'hono';
import { DomainError } from '../../domain/errors.js';
import type { AppEnv } from '../context.js';

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/**
 * The internal endpoints take only the cluster's replication secret (a node or operator token
 * is just a wrong secret here), compared in constant time; with mutual TLS configured, the
 * client must also have presented a certificate the CA signed.
 */
export const requireReplicationSecret = (secret: string | undefined, requireClientCert: boolean): MiddlewareHandler<AppEnv> => {
  const expected = secret ? digest(secret) : undefined;
  return async (c, next) => {
    if (!expected) throw new DomainError('NOT_FOUND', 'replication is not enabled on this node');
    if (requireClientCert) {
      const socket = (c.env as { incoming?: { socket?: TLSSocket } } | undefined)?.incoming?.socket;
      if (!socket?.authorized) throw new DomainError('AUTH_INVALID', 'a client certificate signed by NEBULAGC_TLS_CA is required');
    }
    const auth = c.req.header('authorization');
    const m = auth ? /^Bearer\s+(\S+)\s*$/i.exec(auth) : null;
    if (!m) throw new DomainError('AUTH_MISSING', 'the replication secret is required (Authorization: Bearer)');
    if (!timingSafeEqual(digest(m[1]!), expected)) throw new DomainError('AUTH_INVALID', 'wrong replication secret');
    await next();
  };
};
