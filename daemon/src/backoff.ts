/**
 * Exponential backoff with "full jitter" on the upper half: delays grow from `initialMs` to
 * `maxMs`, and many hosts that failed together do not retry together.
 */
export class Backoff {
  private failures = 0;

  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
  ) {}

  /** The delay before the next attempt, counting this failure. */
  fail(): number {
    const base = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.failures, 30));
    this.failures++;
    return base / 2 + Math.random() * (base / 2);
  }

  reset(): void {
    this.failures = 0;
  }
}

/** ±`fraction` of `ms`, so plain pollers spread out instead of marching in step. */
export const jitter = (ms: number, fraction = 0.2): number => ms * (1 - fraction + Math.random() * 2 * fraction);

export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
