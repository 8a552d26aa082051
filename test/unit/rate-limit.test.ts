import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Context } from 'hono';
import type { AppEnv } from '../../server/src/http/context.js';
import { clientIp, RateLimiter } from '../../server/src/http/middleware/rate-limit.js';

const T0 = 1_700_000_000_000;

describe('RateLimiter', () => {
  it('allows a burst, then refuses', () => {
    const rl = new RateLimiter({ rps: 1, burst: 5 });
    for (let i = 0; i < 5; i++) {
      const d = rl.take('k', T0);
      assert.equal(d.allowed, true, `request ${i + 1} of the burst`);
      assert.equal(d.limit, 5);
      assert.equal(d.remaining, 4 - i);
      assert.equal(d.retryAfterSeconds, 0);
    }
    const refused = rl.take('k', T0);
    assert.equal(refused.allowed, false);
    assert.equal(refused.remaining, 0);
  });

  it('says when to retry (at least 1 s) when refused', () => {
    const rl = new RateLimiter({ rps: 1, burst: 1 });
    assert.equal(rl.take('k', T0).allowed, true);
    const d = rl.take('k', T0);
    assert.equal(d.allowed, false);
    assert.ok(d.retryAfterSeconds >= 1);
    assert.equal(d.retryAfterSeconds, 1);
    assert.ok(d.resetSeconds >= 1);

    // A fast limiter still says at least 1 s, never 0.
    const fast = new RateLimiter({ rps: 1000, burst: 1 });
    fast.take('k', T0);
    const f = fast.take('k', T0);
    assert.equal(f.allowed, false);
    assert.ok(f.retryAfterSeconds >= 1);
  });

  it('retry-after reflects a slow refill rate', () => {
    const rl = new RateLimiter({ rps: 0.1, burst: 1 });
    rl.take('k', T0);
    const d = rl.take('k', T0);
    assert.equal(d.allowed, false);
    assert.equal(d.retryAfterSeconds, 10);
  });

  it('refills with time', () => {
    const rl = new RateLimiter({ rps: 2, burst: 4 });
    for (let i = 0; i < 4; i++) assert.equal(rl.take('k', T0).allowed, true);
    assert.equal(rl.take('k', T0).allowed, false);
    // 250 ms at 2 rps = half a token: still refused.
    assert.equal(rl.take('k', T0 + 250).allowed, false);
    // 500 ms = one token.
    assert.equal(rl.take('k', T0 + 500).allowed, true);
    assert.equal(rl.take('k', T0 + 500).allowed, false);
    // A long pause refills only up to the burst.
    let allowed = 0;
    for (let i = 0; i < 10; i++) if (rl.take('k', T0 + 60_000).allowed) allowed++;
    assert.equal(allowed, 4);
  });

  it('keeps separate keys independent', () => {
    const rl = new RateLimiter({ rps: 1, burst: 2 });
    assert.equal(rl.take('a', T0).allowed, true);
    assert.equal(rl.take('a', T0).allowed, true);
    assert.equal(rl.take('a', T0).allowed, false);
    assert.equal(rl.take('b', T0).allowed, true);
    assert.equal(rl.take('b', T0).allowed, true);
    assert.equal(rl.take('b', T0).allowed, false);
    assert.equal(rl.size, 2);
  });

  it('is disabled when rps is 0 (or burst is 0)', () => {
    assert.equal(new RateLimiter({ rps: 0, burst: 100 }).enabled, false);
    assert.equal(new RateLimiter({ rps: 10, burst: 0 }).enabled, false);
    assert.equal(new RateLimiter({ rps: 10, burst: 20 }).enabled, true);
  });

  it('does not grow without bound: idle full buckets are swept', () => {
    const rl = new RateLimiter({ rps: 100, burst: 1 });
    for (let i = 0; i < 9_999; i++) rl.take(`ip-${i}`, T0);
    assert.equal(rl.size, 9_999);
    // The 10,000th take sweeps; by then every bucket has refilled.
    rl.take('late', T0 + 60_000);
    assert.ok(rl.size <= 1, `expected the idle buckets swept, ${rl.size} remain`);
  });
});

describe('clientIp', () => {
  const ctx = (forwarded: string | undefined): Context<AppEnv> =>
    ({ req: { header: () => forwarded }, env: { incoming: { socket: { remoteAddress: '10.0.0.9' } } } }) as unknown as Context<AppEnv>;

  it('takes the socket address unless the proxy is trusted', () => {
    assert.equal(clientIp(ctx('203.0.113.7'), false), '10.0.0.9');
    assert.equal(clientIp(ctx(undefined), true), '10.0.0.9');
  });

  it('behind a trusted proxy, takes the entry the proxy appended, not one the client sent', () => {
    assert.equal(clientIp(ctx('203.0.113.7'), true), '203.0.113.7');
    assert.equal(clientIp(ctx('1.2.3.4, 203.0.113.7'), true), '203.0.113.7');
  });
});
