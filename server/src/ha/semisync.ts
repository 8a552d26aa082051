import type { Logger } from '../log.js';

export interface SyncSettings {
  /** Replicas that must hold a write durably before it is answered (NEBULAGC_SYNC_REPLICAS). */
  replicas: number;
  timeoutMs: number;
  /** strict: a write not held in time answers 503 SYNC_TIMEOUT. degrade: it is answered, and writes go async until replicas catch up. */
  mode: 'strict' | 'degrade';
}

/** A replica's durable position as the master knows it, and whether it counts toward the sync set. */
export interface SyncVote {
  ackedTxid: number;
  counts: boolean;
}

export type SyncOutcome = 'acknowledged' | 'timeout' | 'degraded';

interface Waiter {
  txid: number;
  resolve(outcome: SyncOutcome): void;
  timer: NodeJS.Timeout;
}

/**
 * Semi-synchronous writes on a master: a write's answer waits until `replicas` replicas have
 * acknowledged, durably, the transaction it reached. Acknowledgements arrive through acked();
 * nothing here touches the network.
 */
export class SyncGate {
  private waiters: Waiter[] = [];
  private degradedSince: number | undefined;

  constructor(
    readonly settings: SyncSettings,
    private readonly votes: () => Iterable<SyncVote>,
    private readonly log: Logger,
    private readonly onDegraded: (degraded: boolean) => void,
  ) {}

  get degraded(): boolean {
    return this.degradedSince !== undefined;
  }

  /** How many counted replicas hold `txid` durably. */
  holders(txid: number): number {
    let n = 0;
    for (const v of this.votes()) if (v.counts && v.ackedTxid >= txid) n++;
    return n;
  }

  /** Resolves once enough replicas hold `txid`, or when the timeout decides. */
  wait(txid: number): Promise<SyncOutcome> {
    if (this.holders(txid) >= this.settings.replicas) return Promise.resolve('acknowledged');
    if (this.degraded) return Promise.resolve('degraded');
    return new Promise((resolve) => {
      const w: Waiter = {
        txid,
        resolve,
        timer: setTimeout(() => this.expire(w), this.settings.timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** Acknowledgements moved: release what they cover; in degraded mode, return to sync once replicas hold `head`. */
  acked(head: number): void {
    if (this.waiters.length > 0) {
      const still: Waiter[] = [];
      for (const w of this.waiters) {
        if (this.holders(w.txid) >= this.settings.replicas) {
          clearTimeout(w.timer);
          w.resolve('acknowledged');
        } else still.push(w);
      }
      this.waiters = still;
    }
    if (this.degraded && this.holders(head) >= this.settings.replicas) {
      this.log.warn({ degraded_ms: Date.now() - this.degradedSince! }, 'synchronous replication restored: writes wait for replicas again');
      this.degradedSince = undefined;
      this.onDegraded(false);
    }
  }

  /** The master is closing: writes still waiting cannot be vouched for. */
  close(): void {
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve('timeout');
    }
    this.waiters = [];
  }

  private expire(w: Waiter): void {
    this.waiters = this.waiters.filter((x) => x !== w);
    if (this.settings.mode === 'strict') {
      this.log.warn({ txid: w.txid, holders: this.holders(w.txid), needed: this.settings.replicas }, 'a write was not held by enough replicas in time: answered 503 SYNC_TIMEOUT');
      w.resolve('timeout');
      return;
    }
    if (!this.degraded) {
      this.degradedSince = Date.now();
      this.onDegraded(true);
      this.log.error({ txid: w.txid, holders: this.holders(w.txid), needed: this.settings.replicas, timeout_ms: this.settings.timeoutMs }, 'synchronous replication degraded: writes are answered without waiting for replicas until they catch up');
    }
    // Every write waiting now goes on too: they all wait for the same replicas.
    for (const x of this.waiters) {
      clearTimeout(x.timer);
      x.resolve('degraded');
    }
    this.waiters = [];
    w.resolve('degraded');
  }
}
