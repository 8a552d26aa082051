import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import Consul from 'consul';
import type { Coordinator, Handover, LeaderValue, Lock, LockEvents, MemberValue } from './coordinator.js';

export interface ConsulOptions {
  /** The agent's HTTP API, e.g. http://127.0.0.1:8500 (a URL without a port means the scheme's). */
  addr: string;
  /** The ACL token, sent as X-Consul-Token. */
  token?: string;
  /** Key prefix: NEBULAGC_CLUSTER_NAME. */
  prefix: string;
  /** NEBULAGC_LOCK_TTL_S: the longest a dead master's lock outlives it. */
  lockTtlS: number;
  /** The servers' session_ttl_min: Consul's default of 10 s unless the cluster was configured otherwise. */
  minSessionTtlS?: number;
}

/** A KV entry as the client decodes it (Value from base64). */
interface Entry {
  Value: string | null;
  Session?: string;
  ModifyIndex: number;
}

/**
 * The parts of the client used here. Its .d.ts leaves out the per-request options its code
 * forwards (timeout, ctx, index, wait), hence this narrower description of the same calls.
 */
interface Req {
  timeout?: number;
  ctx?: EventEmitter;
}
interface Client {
  kv: {
    get(o: { key: string; recurse?: boolean; index?: number; wait?: string } & Req): Promise<unknown>;
    set(o: { key: string; value: string; acquire?: string; cas?: number } & Req): Promise<boolean>;
    del(o: { key: string } & Req): Promise<boolean>;
  };
  session: {
    create(o: { name: string; ttl: string; lockdelay: string; behavior: 'delete'; checks: string[] } & Req): Promise<{ ID: string }>;
    renew(o: { id: string } & Req): Promise<unknown>;
    destroy(o: { id: string } & Req): Promise<unknown>;
  };
  destroy(): void;
}

const REQUEST_MS = 5_000;
/** How long a watch's blocking read waits for a change before asking again. */
const WATCH_WAIT_S = 10;
/** Consul adds up to wait/16 of jitter; the rest is for the answer to arrive. */
const WATCH_TIMEOUT_MS = WATCH_WAIT_S * 1000 * (1 + 1 / 16) + REQUEST_MS;
/** The blocking-query docs ask clients to rate-limit their loops. */
const WATCH_GAP_MS = 50;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 2_000;

const statusOf = (err: unknown): unknown => (err as { statusCode?: unknown }).statusCode;
const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

function json(value: string | null): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(value ?? '');
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Held only while bound to a session: a released or stray key is a free lock. */
function parseLeader(e: Entry): LeaderValue | undefined {
  const v = e.Session ? json(e.Value) : undefined;
  if (typeof v?.nodeId !== 'string' || typeof v.url !== 'string') return undefined;
  return { nodeId: v.nodeId, url: v.url, epoch: e.ModifyIndex };
}

function parseMember(e: Entry): MemberValue | undefined {
  const v = e.Session ? json(e.Value) : undefined;
  if (typeof v?.nodeId !== 'string' || typeof v.url !== 'string' || typeof v.txid !== 'number' || typeof v.candidate !== 'boolean' || typeof v.priority !== 'number') return undefined;
  return { nodeId: v.nodeId, url: v.url, txid: v.txid, candidate: v.candidate, priority: v.priority };
}

/**
 * The election on Consul: the lock is a session and the leader key taken with `?acquire=`.
 *
 * NEBULAGC_LOCK_TTL_S means what it means on etcd: the longest a dead master's lock outlives
 * it. Consul promises only that a session lives at least its TTL; its leader arms the timer at
 * twice the TTL (session_ttl.go), so, as Patroni does, the session's TTL is half of it (Consul's
 * minimum session TTL of 10 s makes that at least 20 s). `ttlMs`, what the coordinator is sure
 * to keep, is that session TTL: the elector fences a master at half of it, a quarter of
 * NEBULAGC_LOCK_TTL_S, before the earliest moment Consul could free the lock.
 *
 * Sessions have no health checks (`"Checks": []`): the agent's serfHealth check could invalidate
 * one before its TTL, while its master still believes it holds the lock. Lock-delay is 0: our
 * masters fence themselves well before their session can end, which is the protection
 * lock-delay gives clients that cannot, and any delay would only lengthen every failover.
 * Behavior "delete": a free lock is an absent key, as on etcd.
 *
 * The epoch is the leader key's ModifyIndex after the acquire: an index of Consul's raft log,
 * which only grows. Members publish their records under a session of their own.
 */
export class ConsulCoordinator implements Coordinator {
  readonly name = 'consul';
  private readonly client: Client;
  private readonly sessionTtlS: number;
  private memberSession: Promise<string> | undefined;
  /** Stops of every running session renewal and watch, for close(). */
  private readonly stops = new Set<() => void>();
  private closed = false;

  constructor(private readonly opts: ConsulOptions) {
    const min = opts.minSessionTtlS ?? 10;
    this.sessionTtlS = opts.lockTtlS / 2;
    if (!(this.sessionTtlS >= min)) {
      throw new Error(`NEBULAGC_LOCK_TTL_S must be at least ${2 * min} s with Consul (got ${opts.lockTtlS}): sessions get half of it, and Consul's minimum session TTL is ${min} s`);
    }
    const url = new URL(opts.addr);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`the Consul address must be an http:// or https:// URL (got ${url.protocol})`);
    const secure = url.protocol === 'https:';
    const client = new Consul({
      host: url.hostname,
      port: Number(url.port) || (secure ? 443 : 80),
      secure,
      ...(opts.token ? { defaults: { token: opts.token } } : {}),
    });
    this.client = client as unknown as Client;
  }

  get ttlMs(): number {
    return this.sessionTtlS * 1000;
  }

  private get leaderKey(): string {
    return `${this.opts.prefix}/leader`;
  }

  private get handoverKey(): string {
    return `${this.opts.prefix}/handover`;
  }

  private async createSession(name: string): Promise<string> {
    const s = await this.client.session.create({ name, ttl: `${this.sessionTtlS}s`, lockdelay: '0s', behavior: 'delete', checks: [], timeout: REQUEST_MS });
    return s.ID;
  }

  private async destroySession(id: string): Promise<void> {
    await this.client.session.destroy({ id, timeout: REQUEST_MS }).catch(() => undefined);
  }

  /**
   * Renews a session every quarter of its TTL, counted from when each renewal was sent, until
   * stopped or the session is gone (404).
   */
  private keepAlive(id: string, createdAt: number, on: { renewed(sentAt: number): void; failed(why: string): void; gone(): void }): () => void {
    const every = this.ttlMs / 4;
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    const stop = (): void => {
      stopped = true;
      clearTimeout(timer);
      this.stops.delete(stop);
    };
    const schedule = (from: number): void => {
      if (!stopped && !this.closed) timer = setTimeout(() => void renew(), Math.max(0, from + every - performance.now()));
    };
    const renew = async (): Promise<void> => {
      const sentAt = performance.now();
      try {
        // A renewal still unanswered when the next is due has failed: it must not hold the next one up.
        await this.client.session.renew({ id, timeout: every });
        if (!stopped) on.renewed(sentAt);
      } catch (err) {
        if (stopped) return;
        if (statusOf(err) === 404) {
          stop();
          return on.gone();
        }
        on.failed(`renewing Consul session ${id} failed: ${messageOf(err)}`);
      }
      schedule(sentAt);
    };
    this.stops.add(stop);
    schedule(createdAt);
    return stop;
  }

  async acquire(value: Omit<LeaderValue, 'epoch'>, events: LockEvents): Promise<Lock | undefined> {
    // The session's TTL runs from when the server created it, after this.
    const createdAt = performance.now();
    const id = await this.createSession(`nebulagc leader ${value.nodeId}`);
    let epoch: number | undefined;
    try {
      if (await this.client.kv.set({ key: this.leaderKey, value: JSON.stringify(value), acquire: id, timeout: REQUEST_MS })) {
        const e = (await this.client.kv.get({ key: this.leaderKey, timeout: REQUEST_MS })) as Entry | undefined;
        // Not ours any more only if the session ended in between.
        if (e?.Session === id) epoch = e.ModifyIndex;
      }
    } catch (err) {
      await this.destroySession(id);
      throw err;
    }
    if (epoch === undefined) {
      await this.destroySession(id);
      return undefined;
    }
    let renewedAt = createdAt;
    const stop = this.keepAlive(id, createdAt, {
      renewed: (sentAt) => {
        renewedAt = sentAt;
      },
      failed: (why) => events.renewFailed(why),
      gone: () => events.lost(`Consul session ${id} is gone: its TTL ran out, or it was destroyed`),
    });
    return {
      epoch,
      get renewedAt() {
        return renewedAt;
      },
      release: async () => {
        stop();
        // Behavior "delete" takes the key with the session, and lock-delay 0 leaves it free at once.
        await this.client.session.destroy({ id, timeout: REQUEST_MS });
      },
    };
  }

  async holder(): Promise<LeaderValue | undefined> {
    const e = (await this.client.kv.get({ key: this.leaderKey, timeout: REQUEST_MS })) as Entry | undefined;
    return e ? parseLeader(e) : undefined;
  }

  /**
   * Blocking reads of the leader key, each from the index the last one answered. The first read
   * does not block, and fails the watch if Consul cannot be read, as holder() would.
   */
  async watch(fn: (holder: LeaderValue | undefined) => void): Promise<() => void> {
    let index = 0;
    let current: LeaderValue | undefined;
    let stopped = false;
    let ctx: EventEmitter | undefined;
    let wake: (() => void) | undefined;
    const read = async (): Promise<string> => {
      ctx = Object.assign(new EventEmitter(), { includeResponse: true });
      const [res, e] = (await this.client.kv.get({ key: this.leaderKey, index, wait: `${WATCH_WAIT_S}s`, timeout: WATCH_TIMEOUT_MS, ctx })) as [IncomingMessage, Entry?];
      const next = Number(res.headers['x-consul-index']);
      // The blocking-query rules: an index that went backwards (a restored snapshot, a rebuilt
      // cluster) starts over with a read that does not block; one that is not positive would
      // make every read return at once.
      index = !(next > 0) ? 1 : next < index ? 0 : next;
      current = e ? parseLeader(e) : undefined;
      return current ? `${current.nodeId}@${current.epoch}` : '';
    };
    let seen = await read();
    const pause = (ms: number): Promise<void> =>
      new Promise((resolve) => {
        const t = setTimeout(resolve, ms);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    const stop = (): void => {
      stopped = true;
      ctx?.emit('cancel');
      wake?.();
      this.stops.delete(stop);
    };
    this.stops.add(stop);
    void (async () => {
      let backoff = BACKOFF_MIN_MS;
      while (!stopped) {
        try {
          const id = await read();
          backoff = BACKOFF_MIN_MS;
          // A read may answer without a change (its wait ran out, or another key moved the index).
          if (!stopped && id !== seen) {
            seen = id;
            fn(current);
          }
          await pause(WATCH_GAP_MS);
        } catch {
          if (stopped) break;
          await pause(backoff);
          backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
        }
      }
    })();
    return stop;
  }

  async publish(member: MemberValue): Promise<void> {
    const key = `${this.opts.prefix}/members/${member.nodeId}`;
    const value = JSON.stringify(member);
    const id = await (this.memberSession ??= this.openMemberSession(member.nodeId));
    if (await this.client.kv.set({ key, value, acquire: id, timeout: REQUEST_MS })) return;
    // Still held by the session of this node's previous run, until that one expires: keep the
    // record current meanwhile. The cas keeps a record deleted in between from coming back bound
    // to no session, never to expire.
    const held = (await this.client.kv.get({ key, timeout: REQUEST_MS })) as Entry | undefined;
    if (held) await this.client.kv.set({ key, value, cas: held.ModifyIndex, timeout: REQUEST_MS });
  }

  /** A session for this node's member record; once it is gone (Consul was out of reach past its TTL) the next publish opens another. */
  private openMemberSession(nodeId: string): Promise<string> {
    const opened = (async () => {
      const createdAt = performance.now();
      const id = await this.createSession(`nebulagc member ${nodeId}`);
      this.keepAlive(id, createdAt, {
        renewed: () => undefined,
        // The next renewal retries; the record stays as long as the session does.
        failed: () => undefined,
        gone: () => {
          if (this.memberSession === opened) this.memberSession = undefined;
        },
      });
      return id;
    })();
    opened.catch(() => {
      if (this.memberSession === opened) this.memberSession = undefined;
    });
    return opened;
  }

  async members(): Promise<MemberValue[]> {
    const all = (await this.client.kv.get({ key: `${this.opts.prefix}/members/`, recurse: true, timeout: REQUEST_MS })) as Entry[] | undefined;
    return (all ?? []).flatMap((e) => parseMember(e) ?? []);
  }

  async setHandover(h: Handover | undefined): Promise<void> {
    if (h) await this.client.kv.set({ key: this.handoverKey, value: JSON.stringify(h), timeout: REQUEST_MS });
    else await this.client.kv.del({ key: this.handoverKey, timeout: REQUEST_MS });
  }

  async handover(): Promise<Handover | undefined> {
    const e = (await this.client.kv.get({ key: this.handoverKey, timeout: REQUEST_MS })) as Entry | undefined;
    const v = e ? json(e.Value) : undefined;
    if (typeof v?.from !== 'string' || typeof v.to !== 'string' || typeof v.until !== 'number') return undefined;
    return { from: v.from, to: v.to, until: v.until };
  }

  async close(): Promise<void> {
    this.closed = true;
    const member = this.memberSession;
    this.memberSession = undefined;
    for (const stop of [...this.stops]) stop();
    const id = await member?.catch(() => undefined);
    if (id) await this.destroySession(id);
    // Closes the kept-alive sockets, so nothing holds the process open.
    this.client.destroy();
  }
}
