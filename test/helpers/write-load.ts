import { TEST_ADMIN_TOKEN } from './server.js';

export interface Ack {
  name: string;
  txid: number;
  /** performance.now() when the 201 arrived. */
  at: number;
  /** The node that acknowledged it. */
  origin: string;
}

/**
 * A client writing tenants one after another, as a careful production client would: it follows
 * a replica's 307 to the master, and on 503 (a fenced master, a node changing role) retries
 * after a few ms. Every 201 is an acknowledged write, recorded with the txid it reached.
 */
export class WriteLoad {
  readonly acks: Ack[] = [];
  /** syncTimeouts: 503 SYNC_TIMEOUT, a write that may or may not have been committed (retried under the same name). */
  readonly retries = { redirects: 0, unavailable: 0, syncTimeouts: 0, errors: 0 };
  private running = false;
  private loop: Promise<void> | undefined;

  private url: string;

  /**
   * `urls`: the nodes the client knows, as a daemon's server list; it starts at the first and
   * moves to the next when one does not answer at all (a stopped master).
   */
  constructor(
    private readonly urls: string[],
    private readonly prefix: string,
    private readonly pauseMs = 2,
  ) {
    this.url = urls[0]!;
  }

  start(): void {
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<Ack[]> {
    this.running = false;
    await this.loop;
    return this.acks;
  }

  private async run(): Promise<void> {
    let n = 0;
    while (this.running) {
      const name = `${this.prefix}-${n}`;
      if (await this.writeOne(name)) n++;
      await new Promise((r) => setTimeout(r, this.pauseMs));
    }
  }

  private async writeOne(name: string): Promise<boolean> {
    for (let attempt = 0; attempt < 2000 && this.running; attempt++) {
      let res: Response;
      try {
        res = await fetch(`${this.url}/api/v1/tenants`, {
          method: 'POST',
          headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
          body: JSON.stringify({ name }),
          redirect: 'manual',
          signal: AbortSignal.timeout(5000),
        });
      } catch {
        this.retries.errors++;
        this.url = this.urls[(this.urls.indexOf(this.url) + 1) % this.urls.length] ?? this.urls[0]!;
        await new Promise((r) => setTimeout(r, 5));
        continue;
      }
      const body = (await res.json()) as { code?: string };
      if (res.status === 201) {
        this.acks.push({ name, txid: Number(res.headers.get('x-nebulagc-txid')), at: performance.now(), origin: this.url });
        return true;
      }
      if (res.status === 307) {
        this.retries.redirects++;
        this.url = new URL(res.headers.get('location')!).origin;
        continue;
      }
      if (res.status === 503) {
        if (body.code === 'SYNC_TIMEOUT') this.retries.syncTimeouts++;
        else this.retries.unavailable++;
        await new Promise((r) => setTimeout(r, 2));
        continue;
      }
      // 409 CONFLICT: an earlier attempt was committed but its answer was lost (a cut
      // connection); the name exists, which is the acknowledgement we missed.
      if (res.status === 409 && body.code === 'CONFLICT') return true;
      throw new Error(`write ${name} answered ${res.status}: ${JSON.stringify(body)}`);
    }
    return false;
  }
}
