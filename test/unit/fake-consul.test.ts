import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { FakeConsul, formatGoDuration, parseGoDuration } from '../fakes/fake-consul.js';

/**
 * Pins the fake Consul's behaviour to what Consul's docs and source say (see the fake's header),
 * with real HTTP requests: the Consul coordinator's tests are only as good as the fake.
 */

const T = { timeout: 15_000 };
const TTL_MS = 300;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Reply {
  status: number;
  headers: Headers;
  text: string;
  json: () => unknown;
}

function client(fake: FakeConsul, headers: Record<string, string> = {}) {
  return async (method: string, path: string, body?: string | object): Promise<Reply> => {
    const r = await fetch(fake.url + path, { method, headers, body: typeof body === 'object' ? JSON.stringify(body) : body });
    const text = await r.text();
    return { status: r.status, headers: r.headers, text, json: () => JSON.parse(text) as unknown };
  };
}

const fake = new FakeConsul({ minTtlMs: 100 });
const call = client(fake);
let n = 0;
const key = (): string => `k${++n}`;

async function session(body: object = {}): Promise<string> {
  const r = await call('PUT', '/v1/session/create', body);
  assert.equal(r.status, 200, r.text);
  return (r.json() as { ID: string }).ID;
}

const entry = async (k: string): Promise<Record<string, unknown> | undefined> => {
  const r = await call('GET', `/v1/kv/${k}`);
  return r.status === 404 ? undefined : (r.json() as Record<string, unknown>[])[0];
};

/** Polls until `cond` holds; returns how long that took. */
async function until(cond: () => Promise<boolean>, boundMs: number, what: string): Promise<number> {
  const start = performance.now();
  while (!(await cond())) {
    if (performance.now() - start > boundMs) throw new Error(`${what}: not within ${boundMs} ms`);
    await sleep(10);
  }
  return performance.now() - start;
}

const alive = async (id: string): Promise<boolean> => ((await call('GET', `/v1/session/info/${id}`)).json() as unknown[]).length === 1;

before(() => fake.start());
after(() => fake.close());

describe('durations as Go writes them', () => {
  it('parses and prints', () => {
    assert.equal(parseGoDuration('10s'), 10e9);
    assert.equal(parseGoDuration('1m30.5s'), 90.5e9);
    assert.equal(parseGoDuration('200ms'), 200e6);
    assert.equal(parseGoDuration('0'), 0);
    assert.throws(() => parseGoDuration('10'), /missing unit/);
    assert.throws(() => parseGoDuration('abc'), /invalid duration "abc"/);
    assert.equal(formatGoDuration(86_400e9), '24h0m0s');
    assert.equal(formatGoDuration(10e9), '10s');
    assert.equal(formatGoDuration(200e6), '200ms');
  });
});

describe('sessions', () => {
  it('create, info, list, renew, destroy', T, async () => {
    const id = await session({ Name: 'a', TTL: '10s', Behavior: 'delete', LockDelay: '0s', Checks: [] });
    const info = await call('GET', `/v1/session/info/${id}`);
    assert.equal(info.status, 200);
    assert.ok(Number(info.headers.get('X-Consul-Index')) >= 1);
    const [s] = info.json() as Record<string, unknown>[];
    assert.deepEqual(
      { ID: s!.ID, Name: s!.Name, Node: s!.Node, LockDelay: s!.LockDelay, Behavior: s!.Behavior, TTL: s!.TTL, NodeChecks: s!.NodeChecks },
      { ID: id, Name: 'a', Node: 'fake-consul', LockDelay: 0, Behavior: 'delete', TTL: '10s', NodeChecks: [] },
    );
    assert.equal(s!.CreateIndex, s!.ModifyIndex);
    assert.ok(((await call('GET', '/v1/session/list')).json() as { ID: string }[]).some((x) => x.ID === id));

    const renewed = await call('PUT', `/v1/session/renew/${id}`);
    assert.equal(renewed.status, 200);
    assert.equal((renewed.json() as { ID: string }[])[0]!.ID, id);

    assert.equal((await call('PUT', `/v1/session/destroy/${id}`)).text, 'true');
    assert.deepEqual((await call('GET', `/v1/session/info/${id}`)).json(), []);
    const gone = await call('PUT', `/v1/session/renew/${id}`);
    assert.equal(gone.status, 404);
    assert.equal(gone.text, `Session id '${id}' not found`);
    // Destroying what is not there is a no-op.
    assert.equal((await call('PUT', `/v1/session/destroy/${id}`)).text, 'true');
  });

  it('defaults: the serfHealth check, a 15 s lock-delay, release; a small LockDelay number means seconds', T, async () => {
    const [d] = (await call('GET', `/v1/session/info/${await session()}`)).json() as Record<string, unknown>[];
    assert.deepEqual([d!.NodeChecks, d!.LockDelay, d!.Behavior, d!.TTL], [['serfHealth'], 15e9, 'release', '']);
    const [five] = (await call('GET', `/v1/session/info/${await session({ LockDelay: 5 })}`)).json() as Record<string, unknown>[];
    assert.equal(five!.LockDelay, 5e9);
  });

  it('refuses bad input with Consul’s codes and texts', T, async () => {
    const strict = new FakeConsul();
    await strict.start();
    try {
      const c = client(strict);
      const short = await c('PUT', '/v1/session/create', { TTL: '5s' });
      assert.deepEqual([short.status, short.text], [500, "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"]);
      const long = await c('PUT', '/v1/session/create', { TTL: '86401s' });
      assert.equal(long.status, 500);
      assert.match(long.text, /^Invalid Session TTL '86401000000000'/);
      assert.equal((await c('PUT', '/v1/session/create', { TTL: '10s' })).status, 200);
      assert.equal((await c('PUT', '/v1/session/create', { TTL: '86400s' })).status, 200);
    } finally {
      await strict.close();
    }
    const junk = await call('PUT', '/v1/session/create', '{"TTL": ');
    assert.equal(junk.status, 400);
    assert.match(junk.text, /^Request decode failed: /);
    const array = await call('PUT', '/v1/session/create', '[]');
    assert.equal(array.status, 400);
    assert.match(array.text, /cannot unmarshal array/);
    const ttlType = await call('PUT', '/v1/session/create', { TTL: 10 });
    assert.equal(ttlType.status, 400);
    const badTtl = await call('PUT', '/v1/session/create', { TTL: 'soon' });
    assert.deepEqual([badTtl.status, badTtl.text], [500, `Session TTL 'soon' invalid: time: invalid duration "soon"`]);
    const behavior = await call('PUT', '/v1/session/create', { Behavior: 'explode' });
    assert.deepEqual([behavior.status, behavior.text], [500, "Invalid Behavior setting 'explode'"]);
    const node = await call('PUT', '/v1/session/create', { Node: 'elsewhere' });
    assert.deepEqual([node.status, node.text], [500, 'Missing node registration']);
    assert.equal((await call('GET', '/v1/session/create')).status, 405);
    assert.equal((await call('GET', '/v1/kv/x?index=soon')).text, 'Invalid index');
    assert.equal((await call('GET', '/v1/kv/x?index=1&wait=soon')).text, 'Invalid wait time');
    assert.equal((await call('PUT', '/v1/kv/x?cas=soon', 'v')).status, 500);
    assert.equal((await call('GET', '/v1/nothing/here')).status, 404);
    assert.equal((await call('GET', '/v1/status/leader')).json(), '127.0.0.1:8300');
  });
});

describe('TTL', () => {
  it('a session outlives its TTL and is invalidated by 2×TTL after its last renewal', T, async () => {
    const id = await session({ TTL: `${TTL_MS}ms` });
    await sleep(TTL_MS / 2);
    const sent = performance.now();
    assert.equal((await call('PUT', `/v1/session/renew/${id}`)).status, 200);
    const answered = performance.now();
    await sleep(TTL_MS * 1.3);
    assert.ok(await alive(id), 'invalidated before 1.3×TTL');
    await until(async () => !(await alive(id)), 3 * TTL_MS, 'invalidation');
    const seen = performance.now();
    assert.ok(seen - sent >= 2 * TTL_MS, `invalidated ${Math.round(seen - sent)} ms after the renewal, before 2×TTL`);
    assert.ok(seen - answered <= 2 * TTL_MS + 400, `invalidated only ${Math.round(seen - answered)} ms after the renewal`);
  });

  it("reap: 'random' invalidates between TTL and 2×TTL", T, async () => {
    const random = new FakeConsul({ minTtlMs: 100, reap: 'random' });
    await random.start();
    try {
      const c = client(random);
      const sent = performance.now();
      const r = await c('PUT', '/v1/session/create', { TTL: `${TTL_MS}ms` });
      const id = (r.json() as { ID: string }).ID;
      const answered = performance.now();
      await until(async () => ((await c('GET', `/v1/session/info/${id}`)).json() as unknown[]).length === 0, 3 * TTL_MS, 'invalidation');
      const seen = performance.now();
      assert.ok(seen - sent >= TTL_MS, `invalidated ${Math.round(seen - sent)} ms after creation, before the TTL`);
      assert.ok(seen - answered <= 2 * TTL_MS + 400);
    } finally {
      await random.close();
    }
  });

  it('invalidation releases or deletes the keys per Behavior, and starts the lock-delay', T, async () => {
    const [kr, kd] = [key(), key()];
    const release = await session({ TTL: '10s', LockDelay: '400ms' });
    const del = await session({ TTL: '10s', Behavior: 'delete', LockDelay: '0s' });
    assert.equal((await call('PUT', `/v1/kv/${kr}?acquire=${release}`, 'r')).text, 'true');
    assert.equal((await call('PUT', `/v1/kv/${kd}?acquire=${del}`, 'd')).text, 'true');
    const before = (await entry(kr))!;
    assert.ok(fake.expireSession(release));
    assert.ok(fake.expireSession(del));
    assert.equal(fake.expireSession(del), false);
    const released = (await entry(kr))!;
    assert.equal(released.Session, undefined);
    assert.equal(released.LockIndex, 1);
    assert.equal(Buffer.from(released.Value as string, 'base64').toString(), 'r');
    assert.ok((released.ModifyIndex as number) > (before.ModifyIndex as number));
    assert.equal(await entry(kd), undefined);

    const other = await session({ TTL: '10s' });
    const t0 = performance.now();
    assert.equal((await call('PUT', `/v1/kv/${kr}?acquire=${other}`, 'x')).text, 'false', 'acquired within the lock-delay');
    await until(async () => (await call('PUT', `/v1/kv/${kr}?acquire=${other}`, 'x')).text === 'true', 2000, 'acquire after the lock-delay');
    assert.ok(performance.now() - t0 >= 350);
    assert.equal((await entry(kr))!.LockIndex, 2);
    // A delay of 0 leaves the deleted key free at once.
    assert.equal((await call('PUT', `/v1/kv/${kd}?acquire=${other}`, 'x')).text, 'true');
  });

  it('an explicit destroy starts the lock-delay too; an explicit release does not', T, async () => {
    const [k1, k2] = [key(), key()];
    const a = await session({ LockDelay: '10s' });
    const b = await session();
    await call('PUT', `/v1/kv/${k1}?acquire=${a}`, 'a');
    await call('PUT', `/v1/kv/${k2}?acquire=${a}`, 'a');
    assert.equal((await call('PUT', `/v1/kv/${k1}?release=${a}`, 'a')).text, 'true');
    assert.equal((await call('PUT', `/v1/kv/${k1}?acquire=${b}`, 'b')).text, 'true');
    await call('PUT', `/v1/session/destroy/${a}`);
    assert.equal((await entry(k2))!.Session, undefined);
    assert.equal((await call('PUT', `/v1/kv/${k2}?acquire=${b}`, 'b')).text, 'false');
  });
});

describe('KV', () => {
  it('acquire, release and their LockIndex, Session, ModifyIndex', T, async () => {
    const k = key();
    const [a, b] = [await session(), await session()];
    assert.equal((await call('PUT', `/v1/kv/${k}?acquire=${a}`, 'one')).text, 'true');
    const first = (await entry(k))!;
    assert.deepEqual([first.Key, first.Session, first.LockIndex, first.Flags], [k, a, 1, 0]);
    assert.equal(first.CreateIndex, first.ModifyIndex);

    // The holder again: the same LockIndex; an unchanged value is no write at all.
    assert.equal((await call('PUT', `/v1/kv/${k}?acquire=${a}`, 'one')).text, 'true');
    assert.equal((await entry(k))!.ModifyIndex, first.ModifyIndex);
    assert.equal((await call('PUT', `/v1/kv/${k}?acquire=${a}`, 'two')).text, 'true');
    const second = (await entry(k))!;
    assert.equal(second.LockIndex, 1);
    assert.ok((second.ModifyIndex as number) > (first.ModifyIndex as number));

    assert.equal((await call('PUT', `/v1/kv/${k}?acquire=${b}`, 'b')).text, 'false');
    assert.equal((await call('PUT', `/v1/kv/${k}?release=${b}`, 'b')).text, 'false');
    // A plain write keeps the holder.
    assert.equal((await call('PUT', `/v1/kv/${k}`, 'plain')).text, 'true');
    assert.equal((await entry(k))!.Session, a);
    assert.equal((await call('PUT', `/v1/kv/${k}?release=${a}`, 'free')).text, 'true');
    assert.equal((await entry(k))!.Session, undefined);
    assert.equal((await call('PUT', `/v1/kv/${k}?acquire=${b}`, 'b')).text, 'true');
    const third = (await entry(k))!;
    assert.deepEqual([third.Session, third.CreateIndex], [b, first.CreateIndex]);
    assert.equal(third.LockIndex, 1, 'the plain write reset LockIndex, as kvsSetTxn does');

    const bogus = await call('PUT', `/v1/kv/${key()}?acquire=not-a-session`, 'x');
    assert.deepEqual([bogus.status, bogus.text], [500, 'invalid session "not-a-session"']);
  });

  it('every write takes the next index; the new holder of a released key bumps LockIndex', T, async () => {
    const k = key();
    const [a, b] = [await session(), await session()];
    const i0 = fake.index;
    await call('PUT', `/v1/kv/${k}?acquire=${a}`, 'a');
    assert.equal(fake.index, i0 + 1);
    await call('PUT', `/v1/kv/${k}?release=${a}`, 'a');
    await call('PUT', `/v1/kv/${k}?acquire=${b}`, 'b');
    assert.equal((await entry(k))!.LockIndex, 2);
    assert.equal((await entry(k))!.ModifyIndex, fake.index);
  });

  it('cas, delete, recurse, raw, keys', T, async () => {
    const k = key();
    assert.equal((await call('PUT', `/v1/kv/${k}?cas=0`, 'v1')).text, 'true');
    assert.equal((await call('PUT', `/v1/kv/${k}?cas=0`, 'v2')).text, 'false');
    const m = (await entry(k))!.ModifyIndex as number;
    assert.equal((await call('PUT', `/v1/kv/${k}?cas=${m + 1000}`, 'v2')).text, 'false');
    assert.equal((await call('PUT', `/v1/kv/${k}?cas=${m}`, 'v2')).text, 'true');
    assert.equal((await call('GET', `/v1/kv/${k}?raw`)).text, 'v2');
    assert.equal((await call('DELETE', `/v1/kv/${k}?cas=${m}`)).text, 'false');
    assert.equal((await call('DELETE', `/v1/kv/${k}`)).text, 'true');
    assert.equal(await entry(k), undefined);
    const missing = await call('GET', `/v1/kv/${k}`);
    assert.equal(missing.status, 404);
    assert.ok(Number(missing.headers.get('X-Consul-Index')) >= 1);

    const dir = key();
    await call('PUT', `/v1/kv/${dir}/b`, 'b');
    await call('PUT', `/v1/kv/${dir}/a/x`, 'x');
    await call('PUT', `/v1/kv/${dir}x`, 'not under it');
    const list = (await call('GET', `/v1/kv/${dir}/?recurse`)).json() as { Key: string }[];
    assert.deepEqual(
      list.map((e) => e.Key),
      [`${dir}/a/x`, `${dir}/b`],
    );
    assert.deepEqual((await call('GET', `/v1/kv/${dir}/?keys&separator=/`)).json(), [`${dir}/a/`, `${dir}/b`]);
    assert.equal((await call('DELETE', `/v1/kv/${dir}/?recurse`)).text, 'true');
    assert.equal((await call('GET', `/v1/kv/${dir}/?recurse`)).status, 404);
    assert.equal((await call('GET', `/v1/kv/${dir}x`)).status, 200);
  });
});

describe('blocking queries', () => {
  it('a blocked read wakes on a change of its key, not of another', T, async () => {
    const [k, other] = [key(), key()];
    await call('PUT', `/v1/kv/${k}`, 'v1');
    const first = await call('GET', `/v1/kv/${k}`);
    const index = Number(first.headers.get('X-Consul-Index'));
    const t0 = performance.now();
    const blocked = call('GET', `/v1/kv/${k}?index=${index}&wait=5s`);
    setTimeout(() => void call('PUT', `/v1/kv/${other}`, 'elsewhere'), 100);
    setTimeout(() => void call('PUT', `/v1/kv/${k}`, 'v2'), 400);
    const r = await blocked;
    const took = performance.now() - t0;
    assert.ok(took >= 380 && took < 3000, `answered after ${Math.round(took)} ms`);
    assert.ok(Number(r.headers.get('X-Consul-Index')) > index);
    assert.equal(Buffer.from((r.json() as { Value: string }[])[0]!.Value, 'base64').toString(), 'v2');
  });

  it('times out after wait (plus at most wait/16) with the same index', T, async () => {
    const k = key();
    await call('PUT', `/v1/kv/${k}`, 'v');
    const index = Number((await call('GET', `/v1/kv/${k}`)).headers.get('X-Consul-Index'));
    const t0 = performance.now();
    const r = await call('GET', `/v1/kv/${k}?index=${index}&wait=300ms`);
    const took = performance.now() - t0;
    assert.ok(took >= 295 && took < 300 + 300 / 16 + 300, `answered after ${Math.round(took)} ms`);
    assert.equal(Number(r.headers.get('X-Consul-Index')), index);
    assert.equal(r.status, 200);
  });

  it('index 0 never blocks; an absent key blocks with its 404 and wakes when created', T, async () => {
    const k = key();
    const t0 = performance.now();
    const now = await call('GET', `/v1/kv/${k}?index=0&wait=5s`);
    assert.equal(now.status, 404);
    assert.ok(performance.now() - t0 < 1000);
    const index = Number(now.headers.get('X-Consul-Index'));
    const blocked = call('GET', `/v1/kv/${k}?index=${index}&wait=5s`);
    setTimeout(() => void call('PUT', `/v1/kv/${k}`, 'here'), 200);
    const r = await blocked;
    assert.equal(r.status, 200);
    assert.ok(Number(r.headers.get('X-Consul-Index')) > index);
  });

  it('a recursive read wakes when a key under its prefix goes away with its session', T, async () => {
    const dir = key();
    const s = await session({ Behavior: 'delete' });
    await call('PUT', `/v1/kv/${dir}/m?acquire=${s}`, 'm');
    const index = Number((await call('GET', `/v1/kv/${dir}/?recurse`)).headers.get('X-Consul-Index'));
    const blocked = call('GET', `/v1/kv/${dir}/?recurse&index=${index}&wait=5s`);
    setTimeout(() => fake.expireSession(s), 200);
    const r = await blocked;
    assert.equal(r.status, 404);
    assert.ok(Number(r.headers.get('X-Consul-Index')) > index);
  });
});

describe('ACL', () => {
  it('a request without the token, or with another, is refused with 403', T, async () => {
    const guarded = new FakeConsul({ token: 'secret' });
    await guarded.start();
    try {
      const none = await client(guarded)('GET', '/v1/kv/x');
      assert.equal(none.status, 403);
      assert.match(none.text, /^Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' lacks permission 'key:read' on "x"$/);
      const wrong = await client(guarded, { 'X-Consul-Token': 'guess' })('PUT', '/v1/session/create', {});
      assert.deepEqual([wrong.status, wrong.text], [403, 'ACL not found']);
      assert.equal((await client(guarded, { 'X-Consul-Token': 'secret' })('GET', '/v1/kv/x')).status, 404);
      assert.equal((await client(guarded)('GET', '/v1/kv/x?token=secret')).status, 404);
      assert.equal((await client(guarded)('GET', '/v1/status/leader')).status, 200);
    } finally {
      await guarded.close();
    }
  });
});

describe('outages', () => {
  it('stop() refuses connections and keeps the state; start() listens on the same port and re-arms the timers', T, async () => {
    const k = key();
    const id = await session({ TTL: `${TTL_MS}ms` });
    await call('PUT', `/v1/kv/${k}?acquire=${id}`, 'kept');
    const url = fake.url;
    const renews = fake.requests('PUT /v1/session/renew');
    await sleep(TTL_MS);
    await fake.stop();
    await assert.rejects(call('PUT', `/v1/session/renew/${id}`));
    assert.equal(fake.requests('PUT /v1/session/renew'), renews);
    await sleep(TTL_MS / 2);
    await fake.start();
    const restarted = performance.now();
    assert.equal(fake.url, url);
    // Without the re-arming it would have gone 2×TTL after its creation, TTL/2 from now.
    await sleep(TTL_MS);
    assert.ok(await alive(id), 'the session was not re-armed');
    assert.equal((await entry(k))!.Session, id);
    await until(async () => !(await alive(id)), 3 * TTL_MS, 'invalidation');
    assert.ok(performance.now() - restarted >= 2 * TTL_MS);
  });

  it('sessions expire during a stop(), but not while the leader is down', T, async () => {
    const cut = await session({ TTL: `${TTL_MS}ms` });
    await fake.stop();
    await sleep(3 * TTL_MS);
    await fake.start();
    assert.equal(await alive(cut), false);

    const kept = await session({ TTL: `${TTL_MS}ms` });
    await fake.stop({ leaderDown: true });
    await sleep(3 * TTL_MS);
    await fake.start();
    assert.ok(await alive(kept));
  });
});
