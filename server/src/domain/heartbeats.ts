import { stmt } from '../db/connection.js';
import type { Store } from './store.js';

export interface HeartbeatStats {
  received: number;
  flushes: number;
  flushedRows: number;
}

/**
 * Heartbeats land in memory and are written in one transaction per interval: 10,000 daemons
 * every 5 s cost one write transaction per flush, not 2,000 a second. A node's latest beat
 * wins; reads of last_seen_at consult the pending map so they are never behind.
 */
export class HeartbeatCoalescer {
  private pending = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  readonly stats: HeartbeatStats = { received: 0, flushes: 0, flushedRows: 0 };

  constructor(
    private readonly store: Store,
    private readonly intervalMs: number,
    private readonly onError: (err: unknown) => void,
    /** Where a batch goes: the local database by default; a replica forwards it to the master. */
    private readonly sink: (batch: Map<string, string>) => number = (batch) => writeHeartbeats(store, batch),
  ) {}

  start(): void {
    this.timer ??= setInterval(() => this.flushSafely(), this.intervalMs);
    this.timer.unref();
  }

  record(nodeId: string, at: string = this.store.now()): void {
    this.stats.received++;
    this.pending.set(nodeId, at);
  }

  pendingFor(nodeId: string): string | undefined {
    return this.pending.get(nodeId);
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /** Writes every pending heartbeat in one transaction. Returns the number of rows updated. */
  flush(): number {
    if (this.pending.size === 0) return 0;
    const batch = this.pending;
    this.pending = new Map();
    try {
      const updated = this.sink(batch);
      this.stats.flushes++;
      this.stats.flushedRows += updated;
      return updated;
    } catch (err) {
      // Keep what failed, unless a newer beat for the node has arrived meanwhile.
      for (const [id, at] of batch) if (!this.pending.has(id)) this.pending.set(id, at);
      throw err;
    }
  }

  private flushSafely(): void {
    try {
      this.flush();
    } catch (err) {
      this.onError(err);
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.flushSafely();
  }
}

/** Stores a batch of heartbeats (node id -> time) in one transaction; never moves time backwards. */
export function writeHeartbeats(store: Store, batch: Map<string, string>): number {
  return store.writer.write('heartbeat.flush', (db) => {
    const update = stmt(db, 'UPDATE nodes SET last_seen_at = ? WHERE id = ? AND (last_seen_at IS NULL OR last_seen_at < ?)');
    let n = 0;
    for (const [id, at] of batch) n += update.run(at, id, at).changes;
    return n;
  });
}
