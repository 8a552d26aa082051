import type { Db } from './connection.js';

export interface CommitInfo {
  /** Sequence number of the commit within this process, counting from 1. */
  seq: number;
  /** Short label of what was written, for logs and metrics. */
  label: string;
  durationMs: number;
}

export type CommitHook = (info: CommitInfo) => void;

/** Thrown when the node is not allowed to write (a replica, or a master that lost its lease). */
export class WritesRefusedError extends Error {
  constructor(readonly reason: string) {
    super(`writes refused: ${reason}`);
  }
}

/**
 * The only path by which anything changes the database. One connection, short IMMEDIATE
 * transactions, and hooks that run after each commit: replication captures WAL frames there,
 * and HA refuses writes through `refuse()`. Route handlers and domain code never open a write
 * connection of their own.
 */
export class Writer {
  private seq = 0;
  private readonly hooks: CommitHook[] = [];
  private refusal: string | undefined;

  constructor(readonly db: Db) {}

  /** Runs `fn` in one IMMEDIATE transaction; rolls back if it throws. */
  write<T>(label: string, fn: (db: Db) => T): T {
    if (this.refusal !== undefined) throw new WritesRefusedError(this.refusal);
    const started = performance.now();
    const result = this.db.transaction(() => fn(this.db)).immediate();
    const info: CommitInfo = { seq: ++this.seq, label, durationMs: performance.now() - started };
    for (const hook of this.hooks) hook(info);
    return result;
  }

  onCommit(hook: CommitHook): () => void {
    this.hooks.push(hook);
    return () => {
      const i = this.hooks.indexOf(hook);
      if (i >= 0) this.hooks.splice(i, 1);
    };
  }

  refuse(reason: string): void {
    this.refusal = reason;
  }

  allow(): void {
    this.refusal = undefined;
  }

  get writable(): boolean {
    return this.refusal === undefined;
  }

  get commits(): number {
    return this.seq;
  }

  close(): void {
    this.db.close();
  }
}
