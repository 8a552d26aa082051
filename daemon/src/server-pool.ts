import { readLimited } from '../../server/src/domain/bundle-archive.js';
import { DomainError } from '../../server/src/domain/errors.js';
import { Backoff } from './backoff.js';
import type { Logger } from './log.js';

export const NODE_TOKEN_HEADER = 'x-nebulagc-node-token';
const MAX_REDIRECTS = 5;

export interface Reply {
  status: number;
  headers: Headers;
  body: Buffer;
}

export interface RequestOptions {
  json?: unknown;
  headers?: Record<string, string>;
  timeoutMs?: number;
  maxBodyBytes?: number;
}

/** Every server is backing off or just failed; `retryAt` is when the first one may be tried again. */
export class AllServersDown extends Error {
  constructor(
    readonly retryAt: number,
    readonly lastError: string,
  ) {
    super(`no control-plane server answered (last error: ${lastError})`);
  }
}

/** The server answered, but with a body over the caller's limit; it was not read to the end. */
export class BodyTooLarge extends Error {
  constructor(
    readonly headers: Headers,
    limit: number,
  ) {
    super(`the reply exceeds ${limit} bytes`);
  }
}

interface ServerState {
  url: string;
  backoff: Backoff;
  nextAttemptAt: number;
  lastError: string | null;
}

/**
 * The cluster's control-plane servers. Requests start at the server that answered last and move
 * down the list on network errors and 5xx; a server that fails waits out its own backoff.
 * Redirects are followed by hand so the node token and the body go along to another origin,
 * which fetch's own redirect handling would drop.
 */
export class ServerPool {
  private readonly servers: ServerState[];
  private preferred = 0;
  private lastAnswered: string | null = null;

  constructor(
    urls: string[],
    private readonly token: string,
    private readonly defaults: { timeoutMs: number; backoff: { initialMs: number; maxMs: number } },
    private readonly log: Logger,
    private readonly shutdown: AbortSignal,
  ) {
    this.servers = urls.map((url) => ({ url, backoff: new Backoff(defaults.backoff.initialMs, defaults.backoff.maxMs), nextAttemptAt: 0, lastError: null }));
  }

  /** The server that answered last, or null before any did. */
  get current(): string | null {
    return this.lastAnswered;
  }

  async request(method: string, path: string, opts: RequestOptions = {}): Promise<Reply> {
    const now = Date.now();
    const order = this.servers.map((_, i) => this.servers[(this.preferred + i) % this.servers.length]!);
    const ready = order.filter((s) => s.nextAttemptAt <= now);
    if (ready.length === 0) {
      this.lastAnswered = null;
      throw new AllServersDown(Math.min(...order.map((s) => s.nextAttemptAt)), order.find((s) => s.lastError)?.lastError ?? 'unknown');
    }
    let lastError = 'unknown';
    for (const server of ready) {
      if (this.shutdown.aborted) break;
      try {
        const reply = await this.send(server.url, method, path, opts);
        if (reply.status >= 500) throw new Error(`HTTP ${reply.status} from ${server.url}`);
        this.succeeded(server);
        return reply;
      } catch (err) {
        if (err instanceof BodyTooLarge) {
          this.succeeded(server);
          throw err;
        }
        lastError = (err as Error).message;
        this.failed(server, lastError);
      }
    }
    this.lastAnswered = null;
    throw new AllServersDown(Math.min(...this.servers.map((s) => s.nextAttemptAt)), lastError);
  }

  private succeeded(server: ServerState): void {
    if (server.lastError !== null) this.log.info({ server: server.url }, 'control-plane server answers again');
    server.backoff.reset();
    server.nextAttemptAt = 0;
    server.lastError = null;
    this.preferred = this.servers.indexOf(server);
    this.lastAnswered = server.url;
  }

  private failed(server: ServerState, message: string): void {
    const delay = server.backoff.fail();
    server.nextAttemptAt = Date.now() + delay;
    server.lastError = message;
    this.log.warn({ server: server.url, err: message, retry_in_ms: Math.round(delay) }, 'control-plane server failed');
  }

  private async send(base: string, method: string, path: string, opts: RequestOptions): Promise<Reply> {
    const headers: Record<string, string> = { [NODE_TOKEN_HEADER]: this.token, accept: 'application/json', ...opts.headers };
    let body: string | undefined;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers['content-type'] = 'application/json';
    }
    let url = new URL(path, base + '/');
    for (let hop = 0; ; hop++) {
      const signal = AbortSignal.any([AbortSignal.timeout(opts.timeoutMs ?? this.defaults.timeoutMs), this.shutdown]);
      const res = await fetch(url, { method, headers, body, redirect: 'manual', signal });
      const location = res.headers.get('location');
      if ((res.status === 307 || res.status === 308) && location) {
        await res.body?.cancel();
        if (hop >= MAX_REDIRECTS) throw new Error(`more than ${MAX_REDIRECTS} redirects from ${base}`);
        url = new URL(location, url);
        this.log.debug({ method, to: url.origin }, 'following redirect to the master');
        continue;
      }
      const limit = opts.maxBodyBytes ?? 1024 * 1024;
      let data: Buffer = Buffer.alloc(0);
      try {
        if (res.body) data = await readLimited(res.body as unknown as AsyncIterable<Uint8Array>, limit);
      } catch (err) {
        if (!(err instanceof DomainError)) throw err;
        await res.body?.cancel().catch(() => undefined);
        throw new BodyTooLarge(res.headers, limit);
      }
      return { status: res.status, headers: res.headers, body: data };
    }
  }
}

/** The JSON body of a reply, or a readable error naming the status and the server's error code. */
export function jsonOf<T>(reply: Reply, what: string): T {
  if (reply.status < 200 || reply.status >= 300) throw new Error(`${what}: ${describeFailure(reply)}`);
  try {
    return JSON.parse(reply.body.toString('utf8')) as T;
  } catch {
    throw new Error(`${what}: the server answered with a body that is not JSON`);
  }
}

export function errorCodeOf(reply: Reply): string | undefined {
  try {
    return (JSON.parse(reply.body.toString('utf8')) as { code?: string }).code;
  } catch {
    return undefined;
  }
}

export function describeFailure(reply: Reply): string {
  let detail = '';
  try {
    const b = JSON.parse(reply.body.toString('utf8')) as { error?: string; code?: string };
    detail = ` ${b.code ?? ''}${b.error ? `: ${b.error}` : ''}`;
  } catch {
    // A body that is not JSON adds nothing a user could act on.
  }
  return `HTTP ${reply.status}${detail}`;
}
