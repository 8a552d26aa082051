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
export const observe = (metrics: Metrics, log: Logger): MiddlewareHandler<AppEnv> => async (c, next) => {
  const started = performance.now();
  await next();
  const seconds = (performance.now() - started) / 1000;
  const status = c.res.status;
  const route = routeLabel(c.req.matchedRoutes);
  metrics.httpRequests.inc({ method: c.req.method, route, status: String(status) });
  metrics.httpDuration.observe({ method: c.req.method, route }, seconds);
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
