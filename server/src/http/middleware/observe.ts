import type { MiddlewareHandler } from 'hono';
import type { Logger } from '../../log.js';
import type { AppEnv } from '../context.js';
import type { Metrics } from '../metrics.js';

/**
 * The route a request was for, even when middleware (auth, rate limits) answered before the
 * handler ran: the last matched entry that is a real route rather than an app.use() path.
 */
function routeLabel(matched: { method: string; path: string }[]): string {
  for (let i = matched.length - 1; i >= 0; i--) if (matched[i]!.method !== 'ALL') return matched[i]!.path;
  return 'unmatched';
}

/**
 * Counts and times every request by its matched route (bounded label values), and logs it.
 * Successful reads log at debug: 10,000 daemons polling would otherwise drown the log.
 */
export const observe = (metrics: Metrics, log: Logger): MiddlewareHandler<AppEnv> => {
  // Label lookups hash their values on every call; the set of routes and statuses is small,
  // so bind each combination once.
  const children = new Map<string, { count: { inc(): void }; duration: { observe(v: number): void } }>();
  return async (c, next) => {
  const started = performance.now();
  await next();
  const seconds = (performance.now() - started) / 1000;
  const status = c.res.status;
  const route = routeLabel(c.req.matchedRoutes);
  const key = `${c.req.method} ${route} ${status}`;
  let bound = children.get(key);
  if (!bound) {
    bound = {
      count: metrics.httpRequests.labels(c.req.method, route, String(status)),
      duration: metrics.httpDuration.labels(c.req.method, route),
    };
    children.set(key, bound);
  }
  bound.count.inc();
  bound.duration.observe(seconds);
  const level = status >= 500 ? 'error' : status >= 400 || c.req.method !== 'GET' ? 'info' : 'debug';
  if (log.isLevelEnabled(level)) {
    const principal = c.get('principal');
    log[level](
      {
        request_id: c.get('requestId'),
        method: c.req.method,
        route,
        path: c.req.path,
        status,
        duration_ms: Math.round(seconds * 100_000) / 100,
        principal: principal ? principal.kind : undefined,
      },
      'request',
    );
  }
};
};
