import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { buffer } from 'node:stream/consumers';

/**
 * A fake Consul agent's HTTP API (sessions, KV, blocking queries, an ACL token), for the Consul
 * coordinator's tests: Consul cannot be installed here. It follows the documented API,
 *   https://developer.hashicorp.com/consul/api-docs/session
 *   https://developer.hashicorp.com/consul/api-docs/kv
 *   https://developer.hashicorp.com/consul/api-docs/features/blocking
 *   https://developer.hashicorp.com/consul/docs/dynamic-app-config/sessions
 * and, where the docs are silent, hashicorp/consul's source. What was checked there:
 *
 * - TTL (agent/consul/session_ttl.go): the leader arms each session's timer at TTL ×
 *   SessionTTLMultiplier (2), re-arms it on every renewal, and re-arms every timer when a new
 *   leader is elected. The contract is only "not before the TTL". `reap: 'random'` picks a moment
 *   in [TTL, 2×TTL] instead, each time a timer is armed, to test clients against that contract.
 * - Invalidation (agent/consul/state/session.go, deleteSessionTxn) is the same for a TTL that ran
 *   out and for an explicit destroy: each key the session holds is released (Session cleared,
 *   LockIndex kept) or deleted, per its Behavior, and the session's lock-delay (capped at
 *   MaxLockDelay, 60 s) starts on those keys. An explicit `?release` starts no lock-delay.
 * - Lock-delay (agent/consul/kvs_endpoint.go) is checked by the leader before the raft apply: an
 *   `?acquire` within it answers false. LockDelay is a duration string or nanoseconds; below
 *   1000 (ns) it is taken as seconds (structs.lockDelayMinThreshold); default 15 s.
 * - Locks (state/kvs.go, kvsLockTxn): a session that does not exist is an error, HTTP 500
 *   `invalid session "<id>"`; a key held by another session answers false; the holder acquiring
 *   again keeps LockIndex, a new holder increments it. A write that changes nothing
 *   (DirEntry.Equal) keeps the ModifyIndex and wakes no blocking query. A plain PUT keeps the
 *   key's Session but, like any write, takes the request's LockIndex (0) (kvsSetTxn). A DELETE
 *   with ?cas of an absent key answers true.
 * - Sessions (agent/session_endpoint.go, consul/session_endpoint.go): a bad body is 400
 *   "Request decode failed: ..."; a TTL out of range is HTTP 500 (a plain RPC error, not a 400)
 *   "Invalid Session TTL '<ns>', must be between [10s=24h0m0s]"; renewing an unknown session is
 *   404 "Session id '<id>' not found"; info on one is 200 `[]`; destroying one is a no-op (true).
 *   `"Checks": []` leaves the session with no health check (NodeChecks []), otherwise it gets
 *   the agent's serfHealth.
 * - Blocking queries (agent/consul/rpc.go, blockingQuery): index 0 never blocks; otherwise the
 *   query waits while the answer's index is ≤ the one given (even one ahead of the server's),
 *   up to `wait` (default 5 min, capped at 10 min) plus up to wait/16 of jitter, then answers with
 *   what it has. An index is never 0 (it is raised to 1). A key's index is its ModifyIndex; an
 *   absent key's (404, which carries X-Consul-Index too) is the KV table's, deletions included;
 *   a prefix's is the highest of its keys and deletions under it.
 * - ACL (acl/errors.go, agent/http.go): no token means the anonymous token, refused with 403
 *   "Permission denied: token with AccessorID '<anonymous>' lacks permission ..."; an unknown
 *   token is 403 "ACL not found".
 *
 * Simplified: one node and one datacenter; no health checks are run (a session's checks are
 * recorded, never evaluated); ACLs are one all-powerful token (Consul would filter a recursive
 * read for a token lacking key:read instead of refusing it); deletions are remembered forever
 * (Consul reaps tombstones after 15 min); a key whose answer is empty wakes its blocking queries
 * on every KV write (Consul's watch then sits on the closest node of its radix tree, which fires
 * for neighbouring keys).
 */

export interface FakeConsulOptions {
  /** When set, every request but /v1/status/leader needs it (X-Consul-Token, or ?token=). */
  token?: string;
  /** When an unrenewed session is invalidated: at 2×TTL as Consul does (default), or anywhere in [TTL, 2×TTL]. */
  reap?: 'double' | 'random';
  /** The servers' session_ttl_min in ms (Consul's default: 10 s); tests lower it. */
  minTtlMs?: number;
}

export interface FakeSession {
  ID: string;
  Name: string;
  Node: string;
  /** Nanoseconds. */
  LockDelay: number;
  Behavior: 'release' | 'delete';
  TTL: string;
  NodeChecks: string[];
  ServiceChecks: unknown[] | null;
  CreateIndex: number;
  ModifyIndex: number;
}

interface Entry {
  LockIndex: number;
  Key: string;
  Flags: number;
  Value: Buffer | null;
  Session: string | undefined;
  CreateIndex: number;
  ModifyIndex: number;
}

type Change = { kind: 'kv'; keys: string[] } | { kind: 'sessions' };
interface Answer {
  status: number;
  index: number;
  body?: unknown;
  /** ?raw: the value itself. */
  raw?: Buffer;
}

const NODE = 'fake-consul';
const ANONYMOUS = '00000000-0000-0000-0000-000000000002';
const NS_PER_MS = 1e6;
const MAX_TTL_NS = 86_400e9;
const MAX_LOCK_DELAY_NS = 60e9;
const DEFAULT_WAIT_MS = 300_000;
const MAX_WAIT_MS = 600_000;
/** The routes served, and their methods. */
const METHODS: Record<string, string[] | undefined> = {
  '/v1/status/leader': ['GET'],
  '/v1/session/create': ['PUT'],
  '/v1/session/destroy': ['PUT'],
  '/v1/session/renew': ['PUT'],
  '/v1/session/info': ['GET'],
  '/v1/session/list': ['GET'],
  '/v1/kv': ['GET', 'PUT', 'DELETE'],
};
const UNITS: Record<string, number> = { ns: 1, us: 1e3, 'µs': 1e3, 'μs': 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Go's time.ParseDuration, in nanoseconds (the error texts are Go's). */
export function parseGoDuration(s: string): number {
  const q = JSON.stringify(s);
  if (s === '0' || /^[-+]0$/.test(s)) return 0;
  const body = s.replace(/^[-+]/, '');
  if (/^(\d+\.?\d*|\.\d+)$/.test(body)) throw new Error(`time: missing unit in duration ${q}`);
  const parts = [...body.matchAll(/(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g)];
  if (body === '' || parts.map((p) => p[0]).join('') !== body) throw new Error(`time: invalid duration ${q}`);
  const ns = parts.reduce((sum, p) => sum + Number(p[1]) * UNITS[p[2]!]!, 0);
  return s.startsWith('-') ? -ns : ns;
}

/** Go's Duration.String(), as Consul prints durations in its errors. */
export function formatGoDuration(ns: number): string {
  const num = (v: number): string => String(Number(v.toFixed(9)));
  if (ns === 0) return '0s';
  if (ns < 1e3) return `${ns}ns`;
  if (ns < 1e6) return `${num(ns / 1e3)}µs`;
  if (ns < 1e9) return `${num(ns / 1e6)}ms`;
  const h = Math.floor(ns / 3600e9);
  const m = Math.floor((ns % 3600e9) / 60e9);
  const s = num((ns % 60e9) / 1e9);
  return h ? `${h}h${m}m${s}s` : m ? `${m}m${s}s` : `${s}s`;
}

const goType = (v: unknown): string => (Array.isArray(v) ? 'array' : typeof v === 'boolean' ? 'bool' : typeof v);

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function parseUint(v: string): number {
  if (!/^\d+$/.test(v)) throw new HttpError(500, `strconv.ParseUint: parsing ${JSON.stringify(v)}: invalid syntax`);
  return Number(v);
}


function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  if (typeof body === 'string' && status >= 400) {
    res.writeHead(status, { ...headers, 'Content-Type': 'text/plain; charset=utf-8' }).end(body);
  } else if (body === undefined) {
    res.writeHead(status, headers).end();
  } else {
    res.writeHead(status, { ...headers, 'Content-Type': 'application/json' }).end(JSON.stringify(body));
  }
}

const render = (e: Entry): Record<string, unknown> => ({
  LockIndex: e.LockIndex,
  Key: e.Key,
  Flags: e.Flags,
  Value: e.Value ? e.Value.toString('base64') : null,
  ...(e.Session ? { Session: e.Session } : {}),
  CreateIndex: e.CreateIndex,
  ModifyIndex: e.ModifyIndex,
});

const same = (a: Entry, b: Entry): boolean =>
  a.LockIndex === b.LockIndex && a.Flags === b.Flags && a.Session === b.Session && (a.Value ?? Buffer.alloc(0)).equals(b.Value ?? Buffer.alloc(0));

export class FakeConsul {
  private readonly server: http.Server;
  private readonly sockets = new Set<Socket>();
  private port = 0;
  /** The raft index: every applied write takes the next one. */
  private raft = 1;
  private sessionsIndex = 0;
  /** The last index that wrote or deleted a key. */
  private kvIndex = 0;
  private readonly sessionMap = new Map<string, FakeSession>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly kv = new Map<string, Entry>();
  private readonly tombstones = new Map<string, number>();
  /** Key → Date.now() until which an ?acquire of it fails. */
  private readonly lockDelays = new Map<string, number>();
  private readonly waiters = new Set<(c: Change) => void>();
  private readonly hits = new Map<string, number>();
  /** Delays every request by this much before it is served, as a slow server would. */
  latencyMs = 0;

  constructor(private readonly opts: FakeConsulOptions = {}) {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    // Consul's agent sets no idle timeout on its Go http.Server; Node's default would close an
    // idle keep-alive connection after 5 s, racing a client that reuses it.
    this.server.keepAliveTimeout = 0;
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  get url(): string {
    if (!this.port) throw new Error('the fake Consul was never started');
    return `http://127.0.0.1:${this.port}`;
  }

  /** The raft index of the last write. */
  get index(): number {
    return this.raft;
  }

  sessions(): FakeSession[] {
    return [...this.sessionMap.values()].map((s) => structuredClone(s));
  }

  /** How many requests reached a route, e.g. 'PUT /v1/session/renew' or 'GET /v1/kv'. */
  requests(route: string): number {
    return this.hits.get(route) ?? 0;
  }

  /**
   * Listens (on the port it had, after a stop()), and re-arms every session timer from now, as a
   * newly elected leader does.
   */
  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.port, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.server.address() as AddressInfo).port;
    for (const s of this.sessionMap.values()) this.arm(s);
  }

  /**
   * An outage: every connection is cut and nothing listens; the state stays. By default the
   * servers go on reaping sessions meanwhile (clients cut off from them); with `leaderDown`
   * nothing reaps until start() elects a new leader (the servers themselves were down).
   */
  async stop(opts: { leaderDown?: boolean } = {}): Promise<void> {
    if (opts.leaderDown) this.disarmAll();
    if (!this.server.listening) return;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  async close(): Promise<void> {
    await this.stop({ leaderDown: true });
  }

  /** Invalidates a session now, as if its TTL had run out; false if there is no such session. */
  expireSession(id: string): boolean {
    return this.invalidate(id);
  }

  private disarmAll(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  private arm(s: FakeSession): void {
    clearTimeout(this.timers.get(s.ID));
    const ttlMs = s.TTL ? parseGoDuration(s.TTL) / NS_PER_MS : 0;
    if (!ttlMs) return;
    const ms = this.opts.reap === 'random' ? ttlMs * (1 + Math.random()) : 2 * ttlMs;
    this.timers.set(
      s.ID,
      setTimeout(() => this.invalidate(s.ID), ms),
    );
  }

  private changed(c: Change): void {
    for (const w of [...this.waiters]) w(c);
  }

  /** Consul's kvsSetTxn: keeps CreateIndex, and the Session unless told otherwise; skips a write that changes nothing. */
  private put(idx: number, e: Omit<Entry, 'CreateIndex' | 'ModifyIndex'>, updateSession: boolean): string[] {
    const old = this.kv.get(e.Key);
    const next: Entry = { ...e, Session: updateSession ? e.Session : old?.Session, CreateIndex: old?.CreateIndex ?? idx, ModifyIndex: idx };
    if (old && same(old, next)) return [];
    this.kv.set(next.Key, next);
    this.kvIndex = idx;
    return [next.Key];
  }

  private remove(idx: number, key: string): string[] {
    if (!this.kv.delete(key)) return [];
    this.tombstones.set(key, idx);
    this.kvIndex = idx;
    return [key];
  }

  private invalidate(id: string): boolean {
    const s = this.sessionMap.get(id);
    if (!s) return false;
    const idx = ++this.raft;
    clearTimeout(this.timers.get(id));
    this.timers.delete(id);
    this.sessionMap.delete(id);
    this.sessionsIndex = idx;
    const delayMs = Math.min(s.LockDelay, MAX_LOCK_DELAY_NS) / NS_PER_MS;
    const keys: string[] = [];
    for (const e of [...this.kv.values()]) {
      if (e.Session !== id) continue;
      keys.push(...(s.Behavior === 'release' ? this.put(idx, { ...e, Session: undefined }, true) : this.remove(idx, e.Key)));
      if (delayMs > 0) this.lockDelays.set(e.Key, Date.now() + delayMs);
    }
    this.changed({ kind: 'sessions' });
    if (keys.length) this.changed({ kind: 'kv', keys });
    return true;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', 'http://fake');
      const body = await buffer(req);
      if (this.latencyMs) await new Promise((r) => setTimeout(r, this.latencyMs));
      const [, v1, area, verb] = url.pathname.split('/');
      const route = area === 'kv' ? `/${v1}/kv` : `/${v1}/${area}/${verb}`;
      const rest = decodeURIComponent(url.pathname.slice(route.length + 1));
      this.hits.set(`${req.method} ${route}`, (this.hits.get(`${req.method} ${route}`) ?? 0) + 1);
      const allowed = METHODS[route];
      if (!allowed) return send(res, 404, undefined);
      if (!allowed.includes(req.method ?? '')) throw new HttpError(405, `method ${req.method} not allowed`);
      if (route !== '/v1/status/leader') this.authorize(req, url, route, rest);
      switch (route) {
        case '/v1/status/leader':
          return send(res, 200, '127.0.0.1:8300');
        case '/v1/session/create':
          return send(res, 200, { ID: this.createSession(body) });
        case '/v1/session/destroy':
          if (!rest) throw new HttpError(400, 'Missing session');
          this.invalidate(rest);
          return send(res, 200, true);
        case '/v1/session/renew': {
          if (!rest) throw new HttpError(400, 'Missing session');
          const s = this.sessionMap.get(rest);
          if (!s) throw new HttpError(404, `Session id '${rest}' not found`);
          this.arm(s);
          return send(res, 200, [s]);
        }
        case '/v1/session/info':
          if (!rest) throw new HttpError(400, 'Missing session');
          return await this.query(url, res, () => this.sessionAnswer([this.sessionMap.get(rest)]), (c) => c.kind === 'sessions');
        case '/v1/session/list':
          return await this.query(url, res, () => this.sessionAnswer([...this.sessionMap.values()]), (c) => c.kind === 'sessions');
        default:
          if (req.method === 'GET') return await this.kvGet(url, res, rest);
          return send(res, 200, req.method === 'PUT' ? this.kvPut(url, rest, body) : this.kvDelete(url, rest));
      }
    } catch (err) {
      if (err instanceof HttpError) return send(res, err.status, err.message);
      // decodeURIComponent on a malformed escape: Go's net/http refuses such a request.
      send(res, err instanceof URIError ? 400 : 500, (err as Error).message);
    }
  }

  private authorize(req: http.IncomingMessage, url: URL, route: string, rest: string): void {
    if (!this.opts.token) return;
    const header = req.headers['x-consul-token'];
    const token = url.searchParams.get('token') || (typeof header === 'string' ? header : '');
    if (token === this.opts.token) return;
    if (token) throw new HttpError(403, 'ACL not found');
    const what =
      route === '/v1/kv'
        ? `'key:${req.method === 'GET' ? 'read' : 'write'}' on ${JSON.stringify(rest)}`
        : `'session:${req.method === 'GET' ? 'read' : 'write'}' on ${JSON.stringify(NODE)}`;
    throw new HttpError(403, `Permission denied: token with AccessorID '${ANONYMOUS}' lacks permission ${what}`);
  }

  private createSession(body: Buffer): string {
    let input: Record<string, unknown> = {};
    if (body.length > 0) {
      let raw: unknown;
      try {
        raw = JSON.parse(body.toString('utf8'));
      } catch (err) {
        throw new HttpError(400, `Request decode failed: ${(err as Error).message}`);
      }
      if (raw !== null && (typeof raw !== 'object' || Array.isArray(raw))) {
        throw new HttpError(400, `Request decode failed: json: cannot unmarshal ${goType(raw)} into Go value of type structs.Session`);
      }
      // Go's JSON decoder matches field names case-insensitively.
      input = Object.fromEntries(Object.entries(raw ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
    }
    const field = <T>(name: string, type: 'string' | 'array', fallback: T): T => {
      const v = input[name.toLowerCase()];
      if (v === undefined || v === null) return fallback;
      if (type === 'string' ? typeof v !== 'string' : !Array.isArray(v) || v.some((x) => typeof x !== 'string')) {
        throw new HttpError(400, `Request decode failed: json: cannot unmarshal ${goType(v)} into Go struct field Session.${name} of type ${type === 'string' ? 'string' : '[]string'}`);
      }
      return v as T;
    };
    const name = field('Name', 'string', '');
    const node = field('Node', 'string', NODE);
    const behavior = field('Behavior', 'string', '') || 'release';
    const ttl = field('TTL', 'string', '');
    const checks = field<string[]>('Checks', 'array', ['serfHealth']);
    let nodeChecks = field<string[]>('NodeChecks', 'array', ['serfHealth']);
    let lockDelay = 15e9;
    const rawDelay = input.lockdelay;
    if (typeof rawDelay === 'string') {
      try {
        lockDelay = parseGoDuration(rawDelay);
      } catch (err) {
        throw new HttpError(400, `Request decode failed: ${(err as Error).message}`);
      }
    } else if (typeof rawDelay === 'number') {
      lockDelay = rawDelay;
    } else if (rawDelay !== undefined && rawDelay !== null) {
      throw new HttpError(400, `Request decode failed: json: cannot unmarshal ${goType(rawDelay)} into Go struct field Session.LockDelay`);
    }
    // Users send 5 meaning 5 s; Go would read 5 ns.
    if (lockDelay < 1000) lockDelay *= 1e9;
    // fixupEmptySessionChecks: "Checks": [] means no check at all; the legacy field adds to NodeChecks.
    if (checks.length === 0) nodeChecks = [];
    else if (!(checks.length === 1 && checks[0] === 'serfHealth') && nodeChecks.length > 0) nodeChecks = [...new Set([...nodeChecks, ...checks])];

    if (behavior !== 'release' && behavior !== 'delete') throw new HttpError(500, `Invalid Behavior setting '${behavior}'`);
    if (ttl) {
      let ns: number;
      try {
        ns = parseGoDuration(ttl);
      } catch (err) {
        throw new HttpError(500, `Session TTL '${ttl}' invalid: ${(err as Error).message}`);
      }
      const min = (this.opts.minTtlMs ?? 10_000) * NS_PER_MS;
      if (ns !== 0 && (ns < min || ns > MAX_TTL_NS)) {
        throw new HttpError(500, `Invalid Session TTL '${ns}', must be between [${formatGoDuration(min)}=${formatGoDuration(MAX_TTL_NS)}]`);
      }
    }
    const idx = ++this.raft;
    if (node !== NODE) throw new HttpError(500, 'Missing node registration');
    const s: FakeSession = {
      ID: randomUUID(),
      Name: name,
      Node: node,
      LockDelay: lockDelay,
      Behavior: behavior,
      TTL: ttl,
      NodeChecks: nodeChecks,
      ServiceChecks: Array.isArray(input.servicechecks) ? input.servicechecks : null,
      CreateIndex: idx,
      ModifyIndex: idx,
    };
    this.sessionMap.set(s.ID, s);
    this.sessionsIndex = idx;
    this.arm(s);
    this.changed({ kind: 'sessions' });
    return s.ID;
  }

  private sessionAnswer(list: (FakeSession | undefined)[]): Answer {
    const body = list.filter((s): s is FakeSession => s !== undefined).sort((a, b) => a.ID.localeCompare(b.ID));
    return { status: 200, index: this.sessionsIndex, body };
  }

  /** Consul's blockingQuery around one read. */
  private async query(url: URL, res: http.ServerResponse, run: () => Answer, wakes: (c: Change) => boolean): Promise<void> {
    const p = url.searchParams;
    let waitMs = 0;
    if (p.get('wait')) {
      try {
        waitMs = parseGoDuration(p.get('wait')!) / NS_PER_MS;
      } catch {
        throw new HttpError(400, 'Invalid wait time');
      }
    }
    const rawIndex = p.get('index');
    if (rawIndex && !/^\d+$/.test(rawIndex)) throw new HttpError(400, 'Invalid index');
    const min = Number(rawIndex ?? 0);
    const fresh = (): Answer => {
      const a = run();
      return { ...a, index: Math.max(a.index, 1) };
    };
    let answer: Answer | undefined = fresh();
    if (min > 0 && answer.index <= min) {
      const base = waitMs > 0 ? Math.min(waitMs, MAX_WAIT_MS) : DEFAULT_WAIT_MS;
      const ms = base + (Math.random() * base) / 16;
      answer = await new Promise<Answer | undefined>((resolve) => {
        const done = (a: Answer | undefined): void => {
          clearTimeout(timer);
          this.waiters.delete(onChange);
          res.off('close', gone);
          resolve(a);
        };
        const onChange = (c: Change): void => {
          if (!wakes(c)) return;
          const a = fresh();
          if (a.index > min) done(a);
        };
        const gone = (): void => done(undefined);
        const timer = setTimeout(() => done(fresh()), ms);
        this.waiters.add(onChange);
        res.on('close', gone);
      });
      // The client went away, or the fake stopped.
      if (!answer) return;
    }
    const meta = { 'X-Consul-Index': String(answer.index), 'X-Consul-KnownLeader': 'true', 'X-Consul-LastContact': '0' };
    if (answer.raw && !res.destroyed) res.writeHead(answer.status, { ...meta, 'Content-Type': 'application/octet-stream' }).end(answer.raw);
    else send(res, answer.status, answer.body, meta);
  }

  private under(prefix: string): Entry[] {
    return [...this.kv.values()].filter((e) => e.Key.startsWith(prefix)).sort((a, b) => (a.Key < b.Key ? -1 : 1));
  }

  /** state/kvs.go kvsListTxn: the highest index among the prefix's keys and deletions, else the table's. */
  private prefixIndex(prefix: string, entries: Entry[]): number {
    if (prefix === '') return this.kvIndex;
    let idx = Math.max(0, ...entries.map((e) => e.ModifyIndex));
    for (const [k, i] of this.tombstones) if (k.startsWith(prefix)) idx = Math.max(idx, i);
    return idx || this.kvIndex;
  }

  private async kvGet(url: URL, res: http.ServerResponse, key: string): Promise<void> {
    const p = url.searchParams;
    const recurse = p.has('recurse');
    const keys = p.has('keys');
    if (!key && !recurse && !keys) throw new HttpError(400, 'Missing key name');
    const touches = (c: Change, empty: boolean, hit: (k: string) => boolean): boolean => c.kind === 'kv' && (empty || c.keys.some(hit));
    if (keys || recurse) {
      const sep = p.get('separator') ?? '';
      return this.query(
        url,
        res,
        () => {
          const entries = this.under(key);
          const index = this.prefixIndex(key, entries);
          if (!entries.length) return { status: 404, index };
          if (!keys) return { status: 200, index, body: entries.map(render) };
          const list = entries.map((e) => {
            const at = sep ? e.Key.indexOf(sep, key.length) : -1;
            return at >= 0 ? e.Key.slice(0, at + sep.length) : e.Key;
          });
          return { status: 200, index, body: [...new Set(list)] };
        },
        (c) => touches(c, this.under(key).length === 0, (k) => k.startsWith(key)),
      );
    }
    return this.query(
      url,
      res,
      () => {
        const e = this.kv.get(key);
        if (!e) return { status: 404, index: this.kvIndex };
        return p.has('raw') ? { status: 200, index: e.ModifyIndex, raw: e.Value ?? Buffer.alloc(0) } : { status: 200, index: e.ModifyIndex, body: [render(e)] };
      },
      (c) => touches(c, !this.kv.has(key), (k) => k === key),
    );
  }

  private kvPut(url: URL, key: string, body: Buffer): boolean {
    if (!key) throw new HttpError(400, 'Missing key name');
    const p = url.searchParams;
    const flags = p.has('flags') ? parseUint(p.get('flags')!) : 0;
    let op: 'set' | 'cas' | 'lock' | 'unlock' = 'set';
    let cas = 0;
    let session = '';
    if (p.has('cas')) [op, cas] = ['cas', parseUint(p.get('cas')!)];
    if (p.has('acquire')) [op, session] = ['lock', p.get('acquire')!];
    if (p.has('release')) [op, session] = ['unlock', p.get('release')!];
    const value = body.length ? body : null;
    // The leader checks lock-delay before the raft apply, so a refused lock takes no index.
    if (op === 'lock' && (this.lockDelays.get(key) ?? 0) > Date.now()) return false;
    const idx = ++this.raft;
    const old = this.kv.get(key);
    let changed: string[];
    if (op === 'lock' || op === 'unlock') {
      if (!session) throw new HttpError(500, 'missing session');
      if (op === 'lock') {
        if (!this.sessionMap.has(session)) throw new HttpError(500, `invalid session ${JSON.stringify(session)}`);
        if (old?.Session && old.Session !== session) return false;
        const lockIndex = !old ? 1 : old.Session === session ? old.LockIndex : old.LockIndex + 1;
        changed = this.put(idx, { Key: key, Flags: flags, Value: value, Session: session, LockIndex: lockIndex }, true);
      } else {
        if (!old || old.Session !== session) return false;
        changed = this.put(idx, { Key: key, Flags: flags, Value: value, Session: undefined, LockIndex: old.LockIndex }, true);
      }
    } else {
      if (op === 'cas' && (cas === 0 ? old !== undefined : old?.ModifyIndex !== cas)) return false;
      changed = this.put(idx, { Key: key, Flags: flags, Value: value, Session: undefined, LockIndex: 0 }, false);
    }
    if (changed.length) this.changed({ kind: 'kv', keys: changed });
    return true;
  }

  private kvDelete(url: URL, key: string): boolean {
    const p = url.searchParams;
    const recurse = p.has('recurse');
    if (!key && !recurse) throw new HttpError(400, 'Missing key name');
    const cas = p.has('cas') ? parseUint(p.get('cas')!) : undefined;
    const idx = ++this.raft;
    let changed: string[] = [];
    if (recurse) {
      for (const e of this.under(key)) changed.push(...this.remove(idx, e.Key));
    } else {
      const old = this.kv.get(key);
      if (cas !== undefined && old && old.ModifyIndex !== cas) return false;
      changed = this.remove(idx, key);
    }
    if (changed.length) this.changed({ kind: 'kv', keys: changed });
    return true;
  }
}
