import type { Db } from '../db/connection.js';
import type { PageImage } from './wire/record.js';

/** Reads every page of the database through `db` (its current snapshot), in page order. */
export function* readAllPages(db: Db): Generator<PageImage> {
  for (const row of db.prepare('SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno').iterate()) {
    const r = row as { pgno: number; data: Buffer };
    yield { pgno: r.pgno, data: r.data };
  }
}
