import type { MiddlewareHandler } from 'hono';
import type { Logger } from '../../log.js';
import type { AppContext, AppEnv } from '../context.js';
import { DeferredCounter, DeferredHistogram, type CountHandle, type ObserveHandle } from '../deferred-metrics.js';
import type { Metrics } from '../metrics.js';

/**
 * The route a request was for, even when middleware (auth, rate limits) answered before the
 * handler ran: the last matched entry that is a real route rather than an app.use() path.
 */
function routeLabel(matched: { method: string; path: string }[]): string {
  for (let i = matched.length - 1; i >= 0; i--) if (matched[i]!.method !== 'ALL') return matched[i]!.path;
  return 'unmatched';
}

/** Everything recorded for one method and route. */
interface RouteStats {
  route: string;
  duration: ObserveHandle;
  byStatus: Map<number, CountHandle>;
}

/**
 * Counts and times every request by its matched route (bounded label values), and logs it.
 * Successful reads log at debug: 10,000 daemons polling would otherwise drown the log.
 */
export const observe = (metrics: Metrics, log: Logger): MiddlewareHandler<AppEnv> => {
  // Label sets are bounded (methods, route patterns, statuses): one handle each, kept.
  const counter = new DeferredCounter(metrics.httpRequests);
  const histogram = new DeferredHistogram(metrics.httpDuration);

  const byRoute = new Map<string, RouteStats>();
  // Static routes (label = path) are found by path, without building the list of matched
  // routes; other paths are unbounded (ids, scanners) and are not remembered.
  const byStaticPath = new Map<string, Map<string, RouteStats>>();

  const statsOf = (c: AppContext): RouteStats => {
    const method = c.req.method;
    const path = c.req.path;
    let paths = byStaticPath.get(method);
    const hit = paths?.get(path);
    if (hit) return hit;
    const route = routeLabel(c.req.matchedRoutes);
    const key = `${method} ${route}`;
    let stats = byRoute.get(key);
    if (!stats) {
      stats = { route, duration: histogram.handle({ method, route }), byStatus: new Map() };
      byRoute.set(key, stats);
    }
    if (route === path) {
      if (!paths) byStaticPath.set(method, (paths = new Map()));
      paths.set(path, stats);
    }
    return stats;
  };

  return async (c, next) => {
    const started = performance.now();
    await next();
    const seconds = (performance.now() - started) / 1000;
    const status = c.res.status;
    const stats = statsOf(c);
    let count = stats.byStatus.get(status);
    if (!count) {
      count = counter.handle({ method: c.req.method, route: stats.route, status: String(status) });
      stats.byStatus.set(status, count);
    }
    count.inc();
    stats.duration.observe(seconds);
    // Server-to-server traffic (replica acks, forwarded heartbeats) is steady and routine: only
    // its failures are worth a line at the default level.
    const path = c.req.path;
    const routine = c.req.method === 'GET' || path.startsWith('/internal/');
    // A load balancer probing /health/master on a replica gets 503 on every probe, by design:
    // that is an answer, not a failure.
    const probeAnswer = status === 503 && (path === '/health' || path.startsWith('/health/'));
    const level = probeAnswer ? 'debug' : status >= 500 ? 'error' : status >= 400 || !routine ? 'info' : 'debug';
    if (log.isLevelEnabled(level)) {
      const principal = c.get('principal');
      log[level](
        {
          request_id: c.get('requestId'),
          method: c.req.method,
          route: stats.route,
          path,
          status,
          duration_ms: Math.round(seconds * 100_000) / 100,
          principal: principal ? principal.kind : undefined,
        },
        'request',
      );
    }
  };
};
