import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import type { Statement } from 'better-sqlite3';
import { openDatabase, type Db } from '../../db/connection.js';

/**
 * Keeping page 1 byte-identical. At every commit that writes page 1, SQLite stamps it (bytes
 * 24-27 and 92-95) with 1 + the change counter the connection last read from disk; it rereads
 * that only when page 1 leaves its cache. So the master's stamps run in steps of one with
 * long flat stretches, and a replica writing the master's page image gets its own stamp
 * instead. This follows the master: before a commit whose image carries stamp M, the replica
 * makes its own next stamp M, by letting page 1 be reread (M = file + 1), by keeping it cached
 * (M = file), or by first committing page 1 unchanged until the file reaches M - 1.
 */
const STAMP_OFFSETS = [24, 92];

export const imageStamp = (page1: Buffer): number => page1.readUInt32BE(24);

/**
 * Opens the applier's connection so that its cached counter is one below the file's, as the
 * master's is after it stamped the file: written into the file for the moment of opening,
 * then put back.
 */
export function openApplierConnection(dbPath: string): { db: Db; fileStamp: number } {
  const flush = openDatabase(dbPath, { synchronous: 'FULL' });
  flush.pragma('wal_checkpoint(TRUNCATE)');
  flush.close();
  const fd = openSync(dbPath, 'r+');
  try {
    const header = Buffer.alloc(100);
    readSync(fd, header, 0, 100, 0);
    const fileStamp = header.readUInt32BE(24);
    const lowered = Buffer.from(header);
    for (const at of STAMP_OFFSETS) lowered.writeUInt32BE((fileStamp - 1) >>> 0, at);
    writeSync(fd, lowered, 0, 100, 0);
    fsyncSync(fd);
    let db: Db;
    try {
      // Commits are made durable after the fact (WalSync), off the event loop.
      db = openDatabase(dbPath, { synchronous: 'NORMAL' });
      db.unsafeMode(true);
      // Read page 1 now, while the file says fileStamp - 1.
      db.prepare('SELECT count(*) FROM sqlite_master').get();
    } finally {
      writeSync(fd, header, 0, 100, 0);
      fsyncSync(fd);
    }
    return { db, fileStamp };
  } finally {
    closeSync(fd);
  }
}

export class StampFollower {
  private readonly readPage1: Statement;
  private readonly rewritePage1: Statement;
  private warned = false;

  constructor(
    private readonly db: Db,
    /** The stamp in the file's page 1 (the last one committed). */
    private fileStamp: number,
    private readonly warn: (msg: string) => void,
  ) {
    this.readPage1 = db.prepare('SELECT data FROM sqlite_dbpage WHERE pgno = 1');
    this.rewritePage1 = db.prepare('INSERT INTO sqlite_dbpage(pgno, data) VALUES (1, (SELECT data FROM sqlite_dbpage WHERE pgno = 1))');
  }

  /** Call before the commit that writes a page-1 image stamped `target`. */
  prepare(target: number): void {
    if (target === this.fileStamp) return;
    if (target < this.fileStamp || target - this.fileStamp > 10_000) {
      if (!this.warned) this.warn(`page 1 stamp ${target} cannot be followed from ${this.fileStamp}; files will differ in page 1 bytes 24-27 and 92-95 until the master's counter moves on`);
      this.warned = true;
      return;
    }
    while (this.fileStamp < target - 1) {
      this.db.pragma('shrink_memory');
      this.db.transaction(() => this.rewritePage1.run())();
      this.fileStamp = this.committedStamp();
    }
    // Let page 1 be reread, so the next stamp is the file's + 1.
    this.db.pragma('shrink_memory');
  }

  /** Call after a commit that wrote page 1. */
  committed(): void {
    this.fileStamp = this.committedStamp();
    this.warned = false;
  }

  private committedStamp(): number {
    return imageStamp((this.readPage1.get() as { data: Buffer }).data);
  }
}
