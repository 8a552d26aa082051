import type { Db } from './connection.js';

export interface CommitInfo {
  /** Sequence number of the commit within this process, counting from 1. */
  seq: number;
  /** Short label of what was written, for logs and metrics. */
  label: string;
  durationMs: number;
}

export type CommitHook = (info: CommitInfo) => void;

export interface LockWait {
  /** Busy timeout of the first attempt. */
  quickMs: number;
  /** Busy timeout once `beforeWait` has released what might block the lock holder. */
  patienceMs: number;
  beforeWait(): void;
  /** Runs first inside the transaction once the lock is held. */
  afterAcquire(): void;
}

/** Thrown when the node is not allowed to write (a replica, or a master that lost its lease). */
export class WritesRefusedError extends Error {
  constructor(readonly reason: string) {
    super(`writes refused: ${reason}`);
  }
}

/**
 * The only path by which anything changes the database, and the write gate HA closes. One
 * connection, short IMMEDIATE transactions, and hooks that run after each commit: replication
 * captures WAL frames there. Route handlers and domain code never open a write connection of
 * their own.
 *
 * The object outlives its connection: a node that turns master attaches one, a node that turns
 * replica detaches it, and the commit hooks (caches, blocking polls) stay registered across.
 */
export class Writer {
  private seq = 0;
  private readonly hooks: CommitHook[] = [];
  private refusal: string | undefined;
  private lockWait: LockWait | undefined;
  private conn: Db | undefined;

  /**
   * One transaction function for every write: better-sqlite3 builds a wrapper (with its
   * deferred/immediate/exclusive variants) per db.transaction() call, which was 15 % of the
   * CPU of a burst of small writes.
   */
  private tx: { immediate(fn: (db: Db) => unknown): unknown } | undefined;

  constructor(db?: Db) {
    if (db) this.attach(db);
    else this.refusal = 'no database is open for writing';
  }

  get db(): Db {
    if (!this.conn) throw new WritesRefusedError(this.refusal ?? 'no database is open for writing');
    return this.conn;
  }

  /** Takes `db` as the write connection and opens the gate. */
  attach(db: Db): void {
    this.conn = db;
    this.tx = db.transaction((fn: (db: Db) => unknown) => fn(db));
    this.lockWait = undefined;
    this.refusal = undefined;
  }

  /** Closes the gate with `reason` and hands back the connection, for the caller to close. */
  detach(reason: string): Db | undefined {
    const db = this.conn;
    this.refusal = reason;
    this.conn = undefined;
    this.tx = undefined;
    this.lockWait = undefined;
    return db;
  }

  /** Runs `fn` in one IMMEDIATE transaction; rolls back if it throws. */
  write<T>(label: string, fn: (db: Db) => T): T {
    if (this.refusal !== undefined) throw new WritesRefusedError(this.refusal);
    return this.underLock(label, fn);
  }

  /**
   * Runs `fn` holding the write lock even while writes are refused: for work that changes
   * nothing but must see an exact commit boundary (a snapshot's start on a fenced master).
   */
  underLock<T>(label: string, fn: (db: Db) => T): T {
    if (!this.tx) throw new WritesRefusedError(this.refusal ?? 'no database is open for writing');
    const started = performance.now();
    let result: T;
    try {
      result = this.tx.immediate(fn) as T;
    } catch (err) {
      if ((err as { code?: string }).code !== 'SQLITE_BUSY' || !this.lockWait) throw err;
      result = this.writeAfterWaiting(this.lockWait, fn);
    }
    const info: CommitInfo = { seq: ++this.seq, label, durationMs: performance.now() - started };
    for (const hook of this.hooks) hook(info);
    return result;
  }

  /**
   * Replication pins the WAL with a read transaction. Another process's checkpoint may hold the
   * write lock while it waits for that reader, so the writer first tries with a short busy
   * timeout; on SQLITE_BUSY it lets the hook release what it holds, then waits for real
   * (docs/HA.md, the Litestream stall trap).
   */
  setLockWait(wait: LockWait): void {
    this.lockWait = wait;
    this.db.pragma(`busy_timeout = ${wait.quickMs}`);
  }

  private writeAfterWaiting<T>(wait: LockWait, fn: (db: Db) => T): T {
    wait.beforeWait();
    this.db.pragma(`busy_timeout = ${wait.patienceMs}`);
    try {
      return this.tx!.immediate((db) => {
        wait.afterAcquire();
        return fn(db);
      }) as T;
    } finally {
      this.db.pragma(`busy_timeout = ${wait.quickMs}`);
    }
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
    this.detach('the server is shutting down')?.close();
  }
}
