import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

export type Db = Database.Database;
export type Synchronous = 'FULL' | 'NORMAL';

export interface OpenOptions {
  readonly?: boolean;
  synchronous?: Synchronous;
}

/**
 * Opens the database with the pragmas every connection needs. Autocheckpoint is left to the
 * writer so that replication (which must see every WAL frame before it is checkpointed) can
 * take it over later without touching the readers.
 */
export function openDatabase(file: string, opts: OpenOptions = {}): Db {
  if (!opts.readonly && file !== ':memory:') mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const db = new Database(file, { readonly: opts.readonly ?? false, fileMustExist: opts.readonly ?? false });
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  if (!opts.readonly) {
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${opts.synchronous ?? 'FULL'}`);
  }
  return db;
}

const statementCache = new WeakMap<Db, Map<string, Database.Statement>>();

/**
 * A prepared statement, compiled once per connection. better-sqlite3 does not cache, and
 * compiling dominated the cost of a daemon poll. Callers build SQL only from fixed pieces, so
 * the cache stays small.
 */
export function stmt(db: Db, sql: string): Database.Statement {
  let cache = statementCache.get(db);
  if (!cache) statementCache.set(db, (cache = new Map()));
  let s = cache.get(sql);
  if (!s) cache.set(sql, (s = db.prepare(sql)));
  return s;
}
