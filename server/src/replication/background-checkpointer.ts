import { Worker } from 'node:worker_threads';
import type { Synchronous } from '../db/connection.js';

/**
 * Writes go on while the thread copies, so what is left afterwards for the caller's own step
 * can be as big as the step was. Callers run more passes (each shorter than the last) while
 * more than FINAL_STEP_PAGES are left, up to MAX_BACKGROUND_PASSES.
 */
export const MAX_BACKGROUND_PASSES = 4;
export const FINAL_STEP_PAGES = 128;

export interface CheckpointResult {
  busy: number;
  log: number;
  checkpointed: number;
}

/**
 * Copies WAL frames into the database file on another thread. A checkpoint's cost is two
 * fsyncs and a write per page; on the event loop it was a 5–40 ms stall every few MiB of WAL
 * (and 13 % of a master's time at 10,000 commits/s). The caller still finishes with its own
 * short checkpoint on its connection: only that one can see the WAL fully copied and let it
 * start over, since writes go on while this one runs.
 */
export class BackgroundCheckpointer {
  private worker: Worker | undefined;
  private pending: { resolve(r: CheckpointResult): void; reject(err: Error): void } | undefined;
  private closed = false;

  constructor(
    private readonly dbPath: string,
    private readonly synchronous: Synchronous,
  ) {
    this.worker = this.spawn();
  }

  get running(): boolean {
    return this.pending !== undefined;
  }

  /** A PASSIVE checkpoint on the thread; rejects if one is already running, the thread failed, or it is closed. */
  passive(): Promise<CheckpointResult> {
    if (this.closed) return Promise.reject(new Error('checkpoint thread is closed'));
    if (this.pending) return Promise.reject(new Error('a checkpoint is already running'));
    // A thread that died is replaced here, at the next checkpoint.
    const worker = (this.worker ??= this.spawn());
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      worker.ref();
      worker.postMessage({ type: 'checkpoint' });
    });
  }

  /** Lets a running checkpoint finish, then closes the thread's connection; resolves when it has exited. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const worker = this.worker;
    if (!worker) return;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    // Someone waits for the exit now: keep the process alive until it comes.
    worker.ref();
    worker.postMessage({ type: 'close' });
    await exited;
  }

  private spawn(): Worker {
    const worker = new Worker(new URL('./checkpoint-worker.js', import.meta.url), { workerData: { dbPath: this.dbPath, synchronous: this.synchronous } });
    // Only a checkpoint in flight keeps the process alive.
    worker.unref();
    worker.on('message', (m: ({ ok: true } & CheckpointResult) | { ok: false; error: string }) => {
      const p = this.settle(worker);
      if (m.ok) p?.resolve({ busy: m.busy, log: m.log, checkpointed: m.checkpointed });
      else p?.reject(new Error(m.error));
    });
    worker.on('error', (err) => this.settle(worker)?.reject(err));
    worker.on('exit', (code) => {
      if (this.worker === worker) this.worker = undefined;
      this.settle(worker)?.reject(new Error(`checkpoint thread exited (${code})`));
    });
    return worker;
  }

  private settle(worker: Worker): { resolve(r: CheckpointResult): void; reject(err: Error): void } | undefined {
    const p = this.pending;
    this.pending = undefined;
    if (!this.closed) worker.unref();
    return p;
  }
}
