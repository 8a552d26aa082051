import { closeSync, fdatasync } from 'node:fs';

/**
 * fdatasync on the thread pool, at most one at a time and at most every `everyMs`: pacing, not
 * durability (nothing waits for it). Left to the kernel, a file written steadily but never
 * synced goes to disk in bursts (the filesystem's 5 s commits), and every fsync on the machine
 * waits behind them: a replica on the same disk saw its commits stall for milliseconds.
 */
export class PacedSync {
  private running: number | undefined;
  private closeAfter: number | undefined;
  private last = Number.NEGATIVE_INFINITY;

  constructor(private readonly everyMs: number) {}

  /** Starts an fdatasync of `fd` unless one is running or the last began under `everyMs` ago. */
  maybe(fd: number): void {
    const now = performance.now();
    if (this.running !== undefined || now - this.last < this.everyMs) return;
    this.last = now;
    this.running = fd;
    // An error here shows again at the next write or sync that matters.
    fdatasync(fd, () => {
      this.running = undefined;
      if (this.closeAfter === fd) {
        this.closeAfter = undefined;
        closeSync(fd);
      }
    });
  }

  /** Closes `fd`, after the fdatasync running on it if there is one (its number could be reused). */
  close(fd: number): void {
    if (fd === this.running) this.closeAfter = fd;
    else closeSync(fd);
  }
}
