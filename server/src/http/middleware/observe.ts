import type { MiddlewareHandler } from 'hono';
import type { Counter, Histogram } from 'prom-client';
import type { Logger } from '../../log.js';
import type { AppContext, AppEnv } from '../context.js';
import type { Metrics } from '../metrics.js';

/**
 * The route a request was for, even when middleware (auth, rate limits) answered before the
 * handler ran: the last matched entry that is a real route rather than an app.use() path.
 */
function routeLabel(matched: { method: string; path: string }[]): string {
  for (let i = matched.length - 1; i >= 0; i--) if (matched[i]!.method !== 'ALL') return matched[i]!.path;
  return 'unmatched';
}

/*
 * prom-client hashes the label values on every inc() and observe(), even through a bound
 * child, and allocates as it goes: that cost as much as the rest of a poll's bookkeeping. So
 * requests are counted and their durations bucketed here, in plain numbers, and handed to the
 * two metrics when prom-client collects them (every scrape of /metrics, or any other read of
 * the registry). What a scrape reports is exact; nothing is sampled or delayed past it.
 */

type Labels = Record<string, string>;

/** What prom-client 15 keeps per label set of a histogram (`hashMap` values). */
interface HistogramEntry {
  labels: Labels;
  bucketValues: Record<string, number>;
  sum: number;
  count: number;
}

/** Requests of one method, route and status not yet added to the counter. */
class PendingCount {
  pending = 0;
  constructor(readonly labels: Labels) {}
}

/** Durations of one method and route not yet added to the histogram, by bucket. */
class PendingDurations {
  readonly counts: Float64Array;
  readonly sums: Float64Array;
  total = 0;

  constructor(
    readonly labels: Labels,
    private readonly bounds: readonly number[],
  ) {
    // One slot per bucket, plus one past the last bound (counted only in +Inf).
    this.counts = new Float64Array(bounds.length + 1);
    this.sums = new Float64Array(bounds.length + 1);
  }

  add(seconds: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && seconds > bounds[i]!) i++;
    this.counts[i]! += 1;
    this.sums[i]! += seconds;
    this.total++;
  }

  /** Adds what is pending to prom-client's entry for these labels, and starts again. */
  flushInto(histogram: Histogram<string>): void {
    if (this.total === 0) return;
    const entry = entryOf(histogram, this.labels);
    for (let i = 0; i < this.counts.length; i++) {
      const n = this.counts[i]!;
      if (n === 0) continue;
      const sum = this.sums[i]!;
      if (entry) {
        entry.sum += sum;
        entry.count += n;
        const bound = this.bounds[i];
        if (bound !== undefined) entry.bucketValues[bound] = (entry.bucketValues[bound] ?? 0) + n;
      } else {
        // Not the shape we know: the public API, one observation at a time. Each value is the
        // mean of its bucket, which lies in that bucket, so buckets, sum and count stay exact.
        for (let k = 0; k < n; k++) histogram.observe(this.labels, sum / n);
      }
      this.counts[i] = 0;
      this.sums[i] = 0;
    }
    this.total = 0;
  }
}

/** prom-client's entry for `labels` (created empty with the public zero()), or undefined if its internals differ. */
function entryOf(histogram: Histogram<string>, labels: Labels): HistogramEntry | undefined {
  const find = (): HistogramEntry | undefined => {
    const map = (histogram as unknown as { hashMap?: Record<string, HistogramEntry> }).hashMap;
    if (!map || typeof map !== 'object') return undefined;
    for (const key in map) if (map[key]!.labels === labels) return map[key];
    return undefined;
  };
  let entry = find();
  if (!entry) {
    histogram.zero(labels);
    entry = find();
  }
  if (!entry || typeof entry.sum !== 'number' || typeof entry.count !== 'number' || typeof entry.bucketValues !== 'object') {
    return undefined;
  }
  return entry;
}

/** Runs `flush` whenever prom-client collects `metric`, before any collect it already had. */
function flushOnCollect(metric: object, flush: () => void): void {
  const m = metric as { collect?: (this: unknown) => unknown };
  const before = m.collect;
  m.collect = function (this: unknown) {
    flush();
    return before?.call(this);
  };
}

/** The histogram's bucket bounds, or undefined (then durations go to observe() per request). */
function boundsOf(histogram: Histogram<string>): readonly number[] | undefined {
  const bounds = (histogram as unknown as { upperBounds?: unknown }).upperBounds;
  return Array.isArray(bounds) && bounds.every((b) => typeof b === 'number') ? bounds : undefined;
}

/** Everything recorded for one method and route. */
interface RouteStats {
  route: string;
  durations: PendingDurations | undefined;
  /** Used when the histogram's bounds are unknown. */
  observe: ((seconds: number) => void) | undefined;
  byStatus: Map<number, PendingCount>;
}

/**
 * Counts and times every request by its matched route (bounded label values), and logs it.
 * Successful reads log at debug: 10,000 daemons polling would otherwise drown the log.
 */
export const observe = (metrics: Metrics, log: Logger): MiddlewareHandler<AppEnv> => {
  const counter: Counter<string> = metrics.httpRequests;
  const histogram: Histogram<string> = metrics.httpDuration;
  const bounds = boundsOf(histogram);
  const counts: PendingCount[] = [];
  const durations: PendingDurations[] = [];
  flushOnCollect(counter, () => {
    for (const c of counts) {
      if (c.pending > 0) {
        counter.inc(c.labels, c.pending);
        c.pending = 0;
      }
    }
  });
  flushOnCollect(histogram, () => {
    for (const d of durations) d.flushInto(histogram);
  });

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
      const labels = { method, route };
      let pending: PendingDurations | undefined;
      if (bounds) durations.push((pending = new PendingDurations(labels, bounds)));
      const child = bounds ? undefined : histogram.labels(labels);
      stats = { route, durations: pending, observe: child && ((v) => child.observe(v)), byStatus: new Map() };
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
      count = new PendingCount({ method: c.req.method, route: stats.route, status: String(status) });
      stats.byStatus.set(status, count);
      counts.push(count);
    }
    count.pending++;
    if (stats.durations) stats.durations.add(seconds);
    else stats.observe!(seconds);
    // Server-to-server traffic (replica acks, forwarded heartbeats) is steady and routine: only
    // its failures are worth a line at the default level.
    const routine = c.req.method === 'GET' || c.req.path.startsWith('/internal/');
    const level = status >= 500 ? 'error' : status >= 400 || !routine ? 'info' : 'debug';
    if (log.isLevelEnabled(level)) {
      const principal = c.get('principal');
      log[level](
        {
          request_id: c.get('requestId'),
          method: c.req.method,
          route: stats.route,
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
