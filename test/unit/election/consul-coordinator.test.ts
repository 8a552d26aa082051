import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LeaderValue, LockEvents, MemberValue } from '../../../server/src/ha/election/coordinator.js';
import { ConsulCoordinator, type ConsulOptions } from '../../../server/src/ha/election/consul.js';
import { FakeConsul } from '../../fakes/fake-consul.js';

/**
 * The Consul coordinator against the fake Consul (test/fakes/fake-consul.ts), with TTLs small
 * enough to watch sessions expire: NEBULAGC_LOCK_TTL_S 1 gives 0.5 s sessions, renewed every
 * 125 ms, which the fake (like Consul) invalidates 1 s after their last renewal.
 */

const T = { timeout: 20_000 };
const LOCK_TTL_S = 1;
const SESSION_TTL_MS = 500;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const fake = new FakeConsul({ minTtlMs: 100 });
const open: ConsulCoordinator[] = [];
let n = 0;

function coordinator(prefix: string, extra: Partial<ConsulOptions> = {}, on: FakeConsul = fake): ConsulCoordinator {
  const c = new ConsulCoordinator({ addr: on.url, prefix, lockTtlS: LOCK_TTL_S, minSessionTtlS: 0.1, ...extra });
  open.push(c);
  return c;
}

function recorder(): LockEvents & { lostWhy: string[]; failedWhy: string[] } {
  const r = {
    lostWhy: [] as string[],
    failedWhy: [] as string[],
    lost: (why: string) => void r.lostWhy.push(why),
    renewFailed: (why: string) => void r.failedWhy.push(why),
  };
  return r;
}

async function until(cond: () => boolean | Promise<boolean>, boundMs: number, what: string): Promise<number> {
  const start = performance.now();
  while (!(await cond())) {
    if (performance.now() - start > boundMs) throw new Error(`${what}: not within ${boundMs} ms`);
    await sleep(10);
  }
  return performance.now() - start;
}

const member = (nodeId: string, txid = 1): MemberValue => ({ nodeId, url: `http://${nodeId}:8080`, txid, candidate: true, priority: 0 });
const sessionNamed = (name: string) => fake.sessions().find((s) => s.Name === name);

before(() => fake.start());
after(async () => {
  await Promise.all(open.map((c) => c.close()));
  await fake.close();
});

describe('ConsulCoordinator', () => {
  it('sessions get half of NEBULAGC_LOCK_TTL_S, so it must be at least twice the minimum session TTL', () => {
    const c = new ConsulCoordinator({ addr: 'http://127.0.0.1:8500', prefix: 'p', lockTtlS: 30 });
    assert.equal(c.ttlMs, 15_000);
    void c.close();
    assert.throws(() => new ConsulCoordinator({ addr: 'http://127.0.0.1:8500', prefix: 'p', lockTtlS: 19 }), /at least 20 s/);
    assert.throws(() => new ConsulCoordinator({ addr: 'consul:8500', prefix: 'p', lockTtlS: 30 }), /http:\/\/ or https:\/\//);
  });

  it('the first acquire wins with an epoch, a second gets undefined; holder() and watch() see the holder', T, async () => {
    const prefix = `c${++n}`;
    const [a, b] = [coordinator(prefix), coordinator(prefix)];
    const seen: (LeaderValue | undefined)[] = [];
    const unwatch = await b.watch((h) => seen.push(h));
    assert.equal(await a.holder(), undefined);
    const lock = await a.acquire({ nodeId: 'a', url: 'http://a:8080' }, recorder());
    assert.ok(lock);
    assert.ok(lock.epoch > 0);
    assert.equal(await b.acquire({ nodeId: 'b', url: 'http://b:8080' }, recorder()), undefined);
    const expected = { nodeId: 'a', url: 'http://a:8080', epoch: lock.epoch };
    assert.deepEqual(await b.holder(), expected);
    await until(() => seen.length > 0, 2000, 'the watch reporting the holder');
    assert.deepEqual(seen, [expected]);
    unwatch();

    // The session behind it: TTL half the lock's, no health check, no lock-delay, deleted keys.
    const s = sessionNamed('nebulagc leader a');
    assert.ok(s);
    assert.deepEqual([s.TTL, s.NodeChecks, s.LockDelay, s.Behavior], [`${SESSION_TTL_MS / 1000}s`, [], 0, 'delete']);
    // The loser's session did not stay behind.
    assert.equal(sessionNamed('nebulagc leader b'), undefined);
    await lock.release();
  });

  it('release frees the lock at once and the watch reports it free; epochs of successive holdings grow', T, async () => {
    const prefix = `c${++n}`;
    const [a, b] = [coordinator(prefix), coordinator(prefix)];
    const seen: (LeaderValue | undefined)[] = [];
    const unwatch = await b.watch((h) => seen.push(h));
    const epochs: number[] = [];
    for (const c of [a, b, a]) {
      const id = c === a ? 'a' : 'b';
      const lock = await c.acquire({ nodeId: id, url: `http://${id}:8080` }, recorder());
      assert.ok(lock, `${id} could not take the free lock`);
      epochs.push(lock.epoch);
      await until(() => seen.at(-1)?.epoch === lock.epoch, 2000, 'the watch seeing the new holder');
      const released = performance.now();
      await lock.release();
      assert.equal(await a.holder(), undefined);
      const took = await until(() => seen.at(-1) === undefined, 2000, 'the watch seeing the lock free');
      assert.ok(performance.now() - released < SESSION_TTL_MS, `free only after ${Math.round(took)} ms`);
    }
    assert.ok(epochs[0]! < epochs[1]! && epochs[1]! < epochs[2]!, `epochs ${epochs.join(', ')}`);
    assert.deepEqual(
      seen.map((h) => h?.epoch),
      [epochs[0], undefined, epochs[1], undefined, epochs[2], undefined],
    );
    unwatch();
  });

  it('a holder whose session is invalidated hears lost, and the lock is free', T, async () => {
    const prefix = `c${++n}`;
    const a = coordinator(prefix);
    const events = recorder();
    const lock = await a.acquire({ nodeId: 'a', url: 'http://a:8080' }, events);
    assert.ok(lock);
    const renewedAt = lock.renewedAt;
    await until(() => lock.renewedAt > renewedAt, 1000, 'a renewal');
    assert.ok(fake.expireSession(sessionNamed('nebulagc leader a')!.ID));
    await until(() => events.lostWhy.length > 0, 1000, 'lost');
    assert.match(events.lostWhy[0]!, /is gone/);
    assert.equal(await a.holder(), undefined);
    await sleep(SESSION_TTL_MS / 2);
    assert.equal(events.lostWhy.length, 1, 'lost more than once');
    assert.deepEqual(events.failedWhy, []);
  });

  it('an outage: renewals fail and renewedAt stays; past 2× the session TTL the session is gone, and lost follows', T, async () => {
    const prefix = `c${++n}`;
    const a = coordinator(prefix);
    const events = recorder();
    const lock = await a.acquire({ nodeId: 'a', url: 'http://a:8080' }, events);
    assert.ok(lock);
    await fake.stop();
    const stoppedAt = lock.renewedAt;
    await until(() => sessionNamed('nebulagc leader a') === undefined, 4 * SESSION_TTL_MS, 'the session expiring in the outage');
    assert.ok(events.failedWhy.length >= 3, `${events.failedWhy.length} failed renewals reported`);
    assert.equal(lock.renewedAt, stoppedAt);
    assert.deepEqual(events.lostWhy, []);
    await fake.start();
    await until(() => events.lostWhy.length > 0, 1000, 'lost');
    assert.equal(lock.renewedAt, stoppedAt);
    assert.equal(await a.holder(), undefined);
  });

  it('renewedAt is when the confirmed renewal was sent, not when its answer came', T, async () => {
    const a = coordinator(`c${++n}`);
    const lock = await a.acquire({ nodeId: 'a', url: 'http://a:8080' }, recorder());
    assert.ok(lock);
    fake.latencyMs = 80;
    try {
      // Past any renewal answered before the delay began.
      await sleep(50);
      const first = lock.renewedAt;
      await until(() => lock.renewedAt !== first, 1000, 'a renewal');
      const age = performance.now() - lock.renewedAt;
      assert.ok(age >= 75, `renewedAt only ${Math.round(age)} ms old when the renewal was confirmed`);
    } finally {
      fake.latencyMs = 0;
    }
    await lock.release();
  });

  it('a Consul restart, however long, keeps the lock: the new leader re-arms every session', T, async () => {
    const prefix = `c${++n}`;
    const a = coordinator(prefix);
    const events = recorder();
    const lock = await a.acquire({ nodeId: 'a', url: 'http://a:8080' }, events);
    assert.ok(lock);
    await fake.stop({ leaderDown: true });
    const stoppedAt = lock.renewedAt;
    await sleep(2 * SESSION_TTL_MS + 300);
    assert.ok(events.failedWhy.length > 0);
    await fake.start();
    await until(() => lock.renewedAt > stoppedAt, 1000, 'a renewal after the restart');
    assert.deepEqual(events.lostWhy, []);
    assert.equal((await a.holder())?.epoch, lock.epoch);
    await lock.release();
  });

  it('members publish, list, and disappear with their session; a lost member session is replaced', T, async () => {
    const prefix = `c${++n}`;
    const [a, b] = [coordinator(prefix), coordinator(prefix)];
    await a.publish(member('a', 5));
    await b.publish(member('b', 7));
    await a.publish(member('a', 6));
    const byId = async () => (await b.members()).sort((x, y) => x.nodeId.localeCompare(y.nodeId));
    assert.deepEqual(await byId(), [member('a', 6), member('b', 7)]);
    assert.equal(fake.sessions().filter((s) => s.Name === 'nebulagc member a').length, 1, 'one session for all of a’s publishes');

    // A record not bound to a session, or not ours, is no member.
    await fetch(`${fake.url}/v1/kv/${prefix}/members/stray`, { method: 'PUT', body: JSON.stringify(member('stray')) });
    const s = (await (await fetch(`${fake.url}/v1/session/create`, { method: 'PUT', body: '{}' })).json()) as { ID: string };
    await fetch(`${fake.url}/v1/kv/${prefix}/members/garbage?acquire=${s.ID}`, { method: 'PUT', body: '{"nodeId": 3' });
    assert.deepEqual(await byId(), [member('a', 6), member('b', 7)]);

    const old = sessionNamed('nebulagc member b')!.ID;
    fake.expireSession(old);
    assert.deepEqual(await byId(), [member('a', 6)]);
    // The renewal finds the session gone; the next publish opens another.
    await sleep(SESSION_TTL_MS / 2);
    await b.publish(member('b', 8));
    assert.deepEqual(await byId(), [member('a', 6), member('b', 8)]);
    assert.notEqual(sessionNamed('nebulagc member b')!.ID, old);

    await a.close();
    assert.deepEqual(await byId(), [member('b', 8)]);
  });

  it("a restarted node's record, still held by its previous session, is kept current until that session goes", T, async () => {
    const prefix = `c${++n}`;
    const [before, restarted] = [coordinator(prefix), coordinator(prefix)];
    await before.publish(member('r', 1));
    const previous = sessionNamed('nebulagc member r')!.ID;
    await restarted.publish(member('r', 2));
    assert.deepEqual(await restarted.members(), [member('r', 2)]);
    fake.expireSession(previous);
    assert.deepEqual(await restarted.members(), []);
    await restarted.publish(member('r', 3));
    assert.deepEqual(await restarted.members(), [member('r', 3)]);
  });

  it('the handover note round-trips', T, async () => {
    const c = coordinator(`c${++n}`);
    assert.equal(await c.handover(), undefined);
    const h = { from: 'a', to: 'b', until: Date.now() + 10_000 };
    await c.setHandover(h);
    assert.deepEqual(await c.handover(), h);
    await c.setHandover(undefined);
    assert.equal(await c.handover(), undefined);
  });

  it('sends the ACL token; without it Consul refuses, and no error shows it', T, async () => {
    const guarded = new FakeConsul({ minTtlMs: 100, token: 'the-secret' });
    await guarded.start();
    try {
      const prefix = `c${++n}`;
      await assert.rejects(coordinator(prefix, {}, guarded).holder(), /forbidden|Permission denied/);
      const wrong = coordinator(prefix, { token: 'a-wrong-secret' }, guarded);
      const err = await wrong.acquire({ nodeId: 'a', url: 'http://a:8080' }, recorder()).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      assert.ok(err, 'a wrong token was accepted');
      assert.doesNotMatch(`${err.message} ${err.stack}`, /a-wrong-secret/);
      const right = coordinator(prefix, { token: 'the-secret' }, guarded);
      const lock = await right.acquire({ nodeId: 'a', url: 'http://a:8080' }, recorder());
      assert.ok(lock);
      await right.publish(member('a'));
      assert.deepEqual(await right.members(), [member('a')]);
      await lock.release();
      await right.close();
    } finally {
      await guarded.close();
    }
  });

  it('close() returns promptly with a watch blocked in Consul, and the watch stops', T, async () => {
    const c = coordinator(`c${++n}`);
    let calls = 0;
    await c.watch(() => void calls++);
    await c.publish(member('z'));
    await sleep(100);
    const reads = fake.requests('GET /v1/kv');
    const t0 = performance.now();
    await c.close();
    const took = performance.now() - t0;
    assert.ok(took < 1000, `close() took ${Math.round(took)} ms`);
    // The member session went with it.
    assert.equal(sessionNamed('nebulagc member z'), undefined);
    await sleep(300);
    assert.equal(fake.requests('GET /v1/kv'), reads, 'the watch kept reading after close()');
    assert.equal(calls, 0);
  });
});
