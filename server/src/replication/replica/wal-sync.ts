import { closeSync, existsSync, fdatasync, fdatasyncSync, openSync } from 'node:fs';

/**
 * Makes a database's commits durable after the fact: fdatasync of its `-wal` file on the thread
 * pool, from a descriptor of our own (Linux flushes a file's dirty pages whichever descriptor
 * asks). It lets a connection commit at synchronous=NORMAL, so readers see a commit at once,
 * and the event loop apply the next batch while this one goes to disk. One sync covers every
 * commit that returned before it started.
 */
export class WalSync {
  private fd: number | undefined;
  private readonly running = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly dbPath: string) {}

  /** Everything committed before the call is on disk when this resolves. */
  sync(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('WAL sync is closed'));
    const fd = this.open();
    if (fd === undefined) return Promise.resolve();
    const run = new Promise<void>((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.running.add(settled);
    void settled.then(() => this.running.delete(settled));
    return run;
  }

  /** The same, on this thread: for a clean shutdown. */
  syncNow(): void {
    const fd = this.open();
    if (fd !== undefined) fdatasyncSync(fd);
  }

  /** Closes the descriptor once no sync is running on it (its number could be reused). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.running);
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  /** The WAL exists once the connection has read or written; before that there is nothing to sync. */
  private open(): number | undefined {
    if (this.fd === undefined && existsSync(`${this.dbPath}-wal`)) this.fd = openSync(`${this.dbPath}-wal`, 'r');
    return this.fd;
  }
}
