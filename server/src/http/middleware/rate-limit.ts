import type { Context, MiddlewareHandler } from 'hono';
import type { RateLimit } from '../../config.js';
import { DomainError } from '../../domain/errors.js';
import type { AppEnv } from '../context.js';
import type { Metrics } from '../metrics.js';
import { noteRateLimit, setHeader } from './request-id.js';

export interface Decision {
  allowed: boolean;
  limit: number;
  remaining: number;
  /** Seconds until the bucket is full again. */
  resetSeconds: number;
  /** Seconds until one request is allowed; 0 when allowed. */
  retryAfterSeconds: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

/** A token bucket per key: `rps` sustained, `burst` at once. Idle buckets are swept lazily. */
export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private takes = 0;

  constructor(readonly limit: RateLimit) {}

  get enabled(): boolean {
    return this.limit.rps > 0 && this.limit.burst > 0;
  }

  take(key: string, now: number = Date.now()): Decision {
    const { rps, burst } = this.limit;
    if (++this.takes % 10_000 === 0) this.sweep(now);
    let b = this.buckets.get(key);
    if (b === undefined) {
      b = { tokens: burst, at: now };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * rps);
    b.at = now;
    const allowed = b.tokens >= 1;
    if (allowed) b.tokens -= 1;
    return {
      allowed,
      limit: burst,
      remaining: Math.floor(b.tokens),
      resetSeconds: Math.ceil((burst - b.tokens) / rps),
      retryAfterSeconds: allowed ? 0 : Math.max(1, Math.ceil((1 - b.tokens) / rps)),
    };
  }

  get size(): number {
    return this.buckets.size;
  }

  private sweep(now: number): void {
    const { rps, burst } = this.limit;
    for (const [key, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * rps >= burst) this.buckets.delete(key);
    }
  }
}

/**
 * Applies one limiter to the request. When several limiters apply, the X-RateLimit-* headers
 * describe the tightest (they are written once, when the response is built); a refusal is
 * RATE_LIMITED with Retry-After.
 */
export function enforce(c: Context<AppEnv>, limiter: RateLimiter, scope: string, key: string, metrics: Metrics): void {
  if (!limiter.enabled) return;
  // Each limiter keeps its own buckets, so the key needs no scope prefix.
  const d = limiter.take(key);
  noteRateLimit(c, d);
  if (!d.allowed) {
    metrics.rateLimited.inc({ scope });
    setHeader(c, 'Retry-After', String(d.retryAfterSeconds));
    throw new DomainError('RATE_LIMITED', `too many requests (${scope} limit); retry in ${d.retryAfterSeconds} s`);
  }
}

interface NodeBindings {
  server?: NodeBindings;
  incoming?: { socket?: { remoteAddress?: string } };
}

export function clientIp(c: Context<AppEnv>, trustProxy: boolean): string {
  if (trustProxy) {
    // The rightmost entry is the one our proxy appended; anything left of it came from the
    // client and would let it pick its own rate-limit key.
    const forwarded = c.req.header('x-forwarded-for')?.split(',').at(-1)?.trim();
    if (forwarded) return forwarded;
  }
  // What getConnInfo() from @hono/node-server reads, without building its result objects.
  const env = c.env as NodeBindings | undefined;
  return (env?.server ?? env)?.incoming?.socket?.remoteAddress ?? 'unknown';
}

export const ipRateLimit = (limiter: RateLimiter, trustProxy: boolean, metrics: Metrics): MiddlewareHandler<AppEnv> =>
  (c, next) => {
    enforce(c, limiter, 'ip', clientIp(c, trustProxy), metrics);
    return next();
  };
