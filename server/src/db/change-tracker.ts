import { stmt, type Db } from './connection.js';

/**
 * A generation number that moves whenever the database may have changed, so hot-path caches
 * (token lookups, config versions) know when to forget. Commits in this process bump it at
 * once; commits by other connections (a CLI process, the replication applier) show up in
 * SQLite's data_version, which is read at most once per `maxAgeMs`.
 */
export class ChangeTracker {
  private generation = 0;
  private dataVersion = -1;
  private checkedAt = -Infinity;

  constructor(
    private readonly reader: () => Db,
    private readonly maxAgeMs = 1,
  ) {}

  current(): number {
    const now = performance.now();
    if (now - this.checkedAt >= this.maxAgeMs) {
      this.checkedAt = now;
      const version = stmt(this.reader(), 'PRAGMA data_version').pluck().get() as number;
      if (version !== this.dataVersion) {
        this.dataVersion = version;
        this.generation++;
      }
    }
    return this.generation;
  }

  /** Something changed here and now: forget without waiting for the next check. */
  bump(): void {
    this.generation++;
    this.checkedAt = -Infinity;
  }
}
