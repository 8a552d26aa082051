import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RateLimiter } from '../../server/src/http/middleware/rate-limit.js';

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
