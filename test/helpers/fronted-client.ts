import { TEST_ADMIN_TOKEN } from './server.js';

export interface Outcome {
  kind: 'write' | 'read';
  /** The tenant a write created. */
  name?: string;
  /** 0 when no HTTP answer came at all. */
  status: number;
  code?: string;
  /** performance.now() when the request was sent and when its answer (or failure) came. */
  start: number;
  end: number;
}

/**
 * A plain client behind a load balancer, as a user's script or a daemon is: it sends each request
 * once, follows no redirect and retries nothing, so every error the fronting lets through is
 * counted. Writers create tenants; readers list them.
 */
export class FrontedClient {
  readonly outcomes: Outcome[] = [];
  private running = false;
  private loops: Promise<void>[] = [];

  constructor(
    private readonly url: string,
    private readonly prefix: string,
    private readonly opts: { writers?: number; readers?: number; pauseMs?: number } = {},
  ) {}

  start(): void {
    this.running = true;
    for (let w = 0; w < (this.opts.writers ?? 1); w++) this.loops.push(this.loop((n) => this.write(`${this.prefix}-w${w}-${n}`)));
    for (let r = 0; r < (this.opts.readers ?? 1); r++) this.loops.push(this.loop(() => this.read()));
  }

  async stop(): Promise<Outcome[]> {
    this.running = false;
    await Promise.all(this.loops);
    return this.outcomes;
  }

  private async loop(one: (n: number) => Promise<void>): Promise<void> {
    for (let n = 0; this.running; n++) {
      await one(n);
      await new Promise((r) => setTimeout(r, this.opts.pauseMs ?? 10));
    }
  }

  private write(name: string): Promise<void> {
    return this.send('write', `${this.url}/api/v1/tenants`, { method: 'POST', body: JSON.stringify({ name }) }, name);
  }

  private read(): Promise<void> {
    return this.send('read', `${this.url}/api/v1/tenants`, { method: 'GET' });
  }

  private async send(kind: Outcome['kind'], url: string, init: RequestInit, name?: string): Promise<void> {
    const start = performance.now();
    const outcome: Outcome = { kind, status: 0, start, end: start, ...(name ? { name } : {}) };
    try {
      const res = await fetch(url, {
        ...init,
        headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
        redirect: 'manual',
        signal: AbortSignal.timeout(30_000),
      });
      outcome.status = res.status;
      const text = await res.text();
      if (res.status >= 300) outcome.code = codeOf(text);
    } catch (err) {
      const e = err as Error & { cause?: { code?: string } };
      outcome.code = e.cause?.code ?? e.name;
    }
    outcome.end = performance.now();
    this.outcomes.push(outcome);
  }
}

function codeOf(text: string): string {
  try {
    return String((JSON.parse(text) as { code?: unknown }).code ?? text.slice(0, 80));
  } catch {
    return text.slice(0, 80);
  }
}

export const succeeded = (o: Outcome): boolean => o.status >= 200 && o.status < 300;

/**
 * The write outage a client saw: the longest time between two acknowledged writes (answers
 * that were slow count as much as errors), in ms, among writes finished in [from, to].
 */
export function longestWriteGap(outcomes: Outcome[], from = -Infinity, to = Infinity): number {
  const acked = outcomes
    .filter((o) => o.kind === 'write' && succeeded(o) && o.end >= from && o.end <= to)
    .map((o) => o.end)
    .sort((a, b) => a - b);
  let gap = 0;
  for (let i = 1; i < acked.length; i++) gap = Math.max(gap, acked[i]! - acked[i - 1]!);
  return gap;
}
