import { randomUUID } from 'node:crypto';
import type { ChangeTracker } from '../db/change-tracker.js';
import type { Db } from '../db/connection.js';
import type { Writer } from '../db/writer.js';

/** What every domain function needs: a read connection, the single writer, and the server secret. */
export interface Store {
  reader: Db;
  writer: Writer;
  secret: string;
  now(): string;
  /** Moves whenever the database may have changed; caches key on it. */
  changes: ChangeTracker;
}

export const newId = (): string => randomUUID();

export interface Page {
  limit: number;
  offset: number;
}

export const sqlBool = (v: boolean): number => (v ? 1 : 0);

const memos = new WeakMap<Store, { generation: number; values: Map<string, unknown> }>();

/**
 * Reads through a cache that lives until the database changes: for the few hot reads every
 * daemon poll makes. Errors (not found) are not cached.
 */
export function memo<T>(store: Store, key: string, load: () => T): T {
  const generation = store.changes.current();
  let m = memos.get(store);
  if (!m || m.generation !== generation || m.values.size > 100_000) memos.set(store, (m = { generation, values: new Map() }));
  if (m.values.has(key)) return m.values.get(key) as T;
  const value = load();
  m.values.set(key, value);
  return value;
}
