import { closeSync, fdatasync } from 'node:fs';

/**
 * fdatasync on the thread pool, at most one at a time and at most every `everyMs`: pacing, not
 * durability (nothing waits for it). For files written steadily whose writes need not wait for
 * the disk: the master's WAL and log segment, which left to the kernel went to disk in bursts
 * (the filesystem's 5 s commits) that every fsync on the machine waited behind, a replica's
 * commits included; and the replica's position file, whose lag behind the disk it bounds. Past
 * `maxBytes` per interval it stands back: at 10,000 commits/s the WAL and log syncs competed
 * with the writes they paced and cost more than the bursts (docs/BENCHMARKS.md, Replication lag).
 */
export class PacedSync {
  private running: number | undefined;
  private closeAfter: number | undefined;
  private last = Number.NEGATIVE_INFINITY;
  private bytes = 0;

  constructor(
    private readonly everyMs: number,
    private readonly maxBytes: number,
  ) {}

  /**
   * Notes `written` more bytes in `fd`, and starts an fdatasync of it unless one is running,
   * the last began under `everyMs` ago, or more than `maxBytes` were written since.
   */
  maybe(fd: number, written: number): void {
    this.bytes += written;
    const now = performance.now();
    if (this.running !== undefined || now - this.last < this.everyMs) return;
    const busy = this.bytes > this.maxBytes;
    this.last = now;
    this.bytes = 0;
    if (busy) return;
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
