import { randomUUID } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import type { StatusCode } from 'hono/utils/http-status';
import type { AppContext, AppEnv } from '../context.js';
import type { Decision } from './rate-limit.js';

/**
 * The headers the middleware gives every response (X-Request-Id, X-RateLimit-*, Retry-After),
 * kept in a plain object instead of going through `c.header()`.
 *
 * Why: before a response exists, `c.header()` writes into a WHATWG `Headers` that Hono then
 * merges into the response. That costs about half a microsecond per `set` and more to
 * iterate, and @hono/node-server writes a response straight to the socket only when its
 * headers are a plain object. So routes that answer through `reply()` (the daemon polls and
 * every error) get one plain object with everything in it. Any other response gets these
 * headers copied onto it once the route has answered, unless the route set the same header
 * itself (prepared headers never override a route's own in Hono either).
 *
 * `c.header()` keeps working as before, for middleware and routes that use it: those headers
 * stay with Hono, and `reply()` then lets Hono build the response so that they are in it.
 */
export interface Envelope {
  /** Lower-case header name -> value. */
  headers: Record<string, string>;
  /** The tightest rate-limit decision so far; written as X-RateLimit-* when the response is built. */
  rateLimit: Decision | undefined;
  /** A response with `headers` in it has been built (by `reply()`). */
  built: boolean;
  /** `c.header()` was called before the response existed: Hono holds headers of its own. */
  honoHeaders: boolean;
}

declare module 'hono' {
  interface ContextVariableMap {
    envelope: Envelope;
  }
}

const SAFE = /^[A-Za-z0-9._:-]{1,128}$/;

// UUID-shaped ids without a random draw per request: a random prefix per process (74 random
// bits), then a counter in the last 12 hex digits. Unique for the logs, not a secret.
const COUNTER_END = 0x1000000000000;
let idPrefix = '';
let idCounter = COUNTER_END;

function newRequestId(): string {
  if (++idCounter >= COUNTER_END) {
    idPrefix = randomUUID().slice(0, 24);
    idCounter = 1;
  }
  return idPrefix + idCounter.toString(16).padStart(12, '0');
}

/**
 * The first middleware: keeps a caller's (or the load balancer's) request id when it is sane,
 * otherwise makes one, and owns the response headers of the request (see Envelope).
 */
export const requestId = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const given = c.req.header('x-request-id');
  const id = given !== undefined && SAFE.test(given) ? given : newRequestId();
  const env: Envelope = { headers: { 'x-request-id': id }, rateLimit: undefined, built: false, honoHeaders: false };
  c.set('requestId', id);
  c.set('envelope', env);
  // Note when Hono starts holding headers of its own, so that reply() keeps them.
  const honoHeader = c.header;
  c.header = ((name: string, value?: string, options?: { append?: boolean }): void => {
    if (!c.finalized) env.honoHeaders = true;
    honoHeader(name, value, options);
  }) as typeof c.header;
  await next();
  if (!env.built) applyEnvelope(c, env);
};

function writeRateLimit(env: Envelope): void {
  const d = env.rateLimit;
  if (!d) return;
  env.headers['x-ratelimit-limit'] = String(d.limit);
  env.headers['x-ratelimit-remaining'] = String(d.remaining);
  env.headers['x-ratelimit-reset'] = String(d.resetSeconds);
}

/** Copies the envelope onto a response some other code built, keeping the headers it set itself. */
function applyEnvelope(c: AppContext, env: Envelope): void {
  writeRateLimit(env);
  const res = c.res;
  try {
    const headers = res.headers;
    for (const name in env.headers) if (!headers.has(name)) headers.set(name, env.headers[name]!);
  } catch (err) {
    // A Response with immutable headers (one straight from fetch()): answer with a copy.
    if (!(err instanceof TypeError)) throw err;
    const copy = new Response(res.body, res);
    for (const name in env.headers) if (!copy.headers.has(name)) copy.headers.set(name, env.headers[name]!);
    c.res = undefined;
    c.res = copy;
  }
}

/** Sets one of the envelope's headers (Retry-After, say) on this request's response, whatever builds it. */
export function setHeader(c: AppContext, name: string, value: string): void {
  const env = c.get('envelope');
  if (env) env.headers[name.toLowerCase()] = value;
  else c.header(name, value);
}

/** Records a rate-limit decision when it is the tightest so far (or a refusal). */
export function noteRateLimit(c: AppContext, d: Decision): void {
  const env = c.get('envelope');
  if (!env) {
    c.header('X-RateLimit-Limit', String(d.limit));
    c.header('X-RateLimit-Remaining', String(d.remaining));
    c.header('X-RateLimit-Reset', String(d.resetSeconds));
    return;
  }
  const tightest = env.rateLimit;
  if (!d.allowed || tightest === undefined || tightest.remaining > d.remaining) env.rateLimit = d;
}

/**
 * Builds the response with the envelope's headers plus `headers` (lower-case names; they win),
 * as one plain object, which @hono/node-server writes without building a WHATWG Response.
 */
export function reply(
  c: AppContext,
  body: string | Uint8Array<ArrayBuffer> | null,
  status: StatusCode,
  headers?: Readonly<Record<string, string>>,
): Response {
  const env = c.get('envelope');
  if (!env) return c.newResponse(body, status, headers);
  writeRateLimit(env);
  const all = env.headers;
  if (headers) for (const name in headers) all[name] = headers[name]!;
  env.built = true;
  // Hono merges the headers it holds with ours, ours winning, as if we had passed them to c.json().
  if (env.honoHeaders) return c.newResponse(body, status, { ...all });
  return new Response(body, { status, headers: all });
}
