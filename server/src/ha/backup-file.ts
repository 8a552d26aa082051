import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { Db } from '../db/connection.js';
import { readAllPages } from '../replication/db-pages.js';
import { DbChecksum } from '../replication/wire/checksum.js';

/** Where POST /cluster/snapshot writes its files: beside the database. */
export const backupDir = (dbPath: string): string => `${path.resolve(dbPath)}-backups`;

/**
 * Copies every page `db` sees (it must be inside a read transaction, so the pages are one
 * consistent image) into a new database file, synced before it takes its final name. The copy
 * is byte for byte the database at that moment, so its checksum is the replication checksum.
 */
export function writeBackupFile(db: Db, dest: string): { bytes: number; checksum: string } {
  mkdirSync(path.dirname(dest), { recursive: true, mode: 0o700 });
  const tmp = `${dest}.partial`;
  const fd = openSync(tmp, 'w', 0o600);
  const sum = new DbChecksum(db.pragma('page_size', { simple: true }) as number);
  let bytes = 0;
  let last = 0;
  try {
    for (const p of readAllPages(db)) {
      writeSync(fd, p.data, 0, p.data.length, (p.pgno - 1) * p.data.length);
      sum.setPage(p.pgno, p.data);
      bytes += p.data.length;
      last = p.pgno;
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  sum.resize(last);
  renameSync(tmp, dest);
  const dir = openSync(path.dirname(dest), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
  return { bytes, checksum: sum.value };
}
