import type { Counter, Histogram } from 'prom-client';

/*
 * prom-client hashes the label values on every inc() and observe(), even through a bound
 * child, and allocates as it goes: on a poll that cost as much as the rest of its bookkeeping,
 * and on the write path it was a fifth of what a master allocates per commit. So hot paths
 * count and bucket in plain numbers here, through a handle per label set, and the numbers are
 * handed to the metric when prom-client collects it (every scrape of /metrics, or any other
 * read of the registry). What a scrape reports is exact; nothing is sampled or delayed past it.
 */

type Labels = Record<string, string>;

export interface CountHandle {
  inc(n?: number): void;
}

export interface ObserveHandle {
  observe(value: number): void;
}

/** What prom-client 15 keeps per label set of a histogram (`hashMap` values). */
interface HistogramEntry {
  labels: Labels;
  bucketValues: Record<string, number>;
  sum: number;
  count: number;
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

/** Increments of one counter, by label set, added to it at collect time. */
export class DeferredCounter {
  private readonly pending: { labels: Labels; n: number }[] = [];

  constructor(counter: Counter<string>) {
    flushOnCollect(counter, () => {
      for (const p of this.pending) {
        if (p.n > 0) {
          counter.inc(p.labels, p.n);
          p.n = 0;
        }
      }
    });
  }

  /** A handle for one label set; make it once and keep it. */
  handle(labels: Labels): CountHandle {
    const p = { labels, n: 0 };
    this.pending.push(p);
    return {
      inc: (n = 1) => {
        p.n += n;
      },
    };
  }
}

/** Observations of one histogram, by label set and bucket, added to it at collect time. */
export class DeferredHistogram {
  private readonly bounds: readonly number[] | undefined;
  private readonly pending: PendingObservations[] = [];

  constructor(private readonly histogram: Histogram<string>) {
    const bounds = (histogram as unknown as { upperBounds?: unknown }).upperBounds;
    this.bounds = Array.isArray(bounds) && bounds.every((b) => typeof b === 'number') ? bounds : undefined;
    flushOnCollect(histogram, () => {
      for (const p of this.pending) p.flushInto(histogram);
    });
  }

  /** A handle for one label set; make it once and keep it. Without known bounds, observe() goes straight to prom-client. */
  handle(labels: Labels): ObserveHandle {
    if (!this.bounds) {
      const child = this.histogram.labels(labels);
      return { observe: (v) => child.observe(v) };
    }
    const p = new PendingObservations(labels, this.bounds);
    this.pending.push(p);
    return p;
  }
}

/** Observations for one label set not yet added to the histogram, by bucket. */
class PendingObservations implements ObserveHandle {
  private readonly counts: Float64Array;
  private readonly sums: Float64Array;
  private total = 0;

  constructor(
    private readonly labels: Labels,
    private readonly bounds: readonly number[],
  ) {
    // One slot per bucket, plus one past the last bound (counted only in +Inf).
    this.counts = new Float64Array(bounds.length + 1);
    this.sums = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]! += 1;
    this.sums[i]! += value;
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
