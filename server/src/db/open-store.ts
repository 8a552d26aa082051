import { ChangeTracker } from './change-tracker.js';
import { openDatabase, type Synchronous } from './connection.js';
import { migrate, type MigrationResult } from './migrations.js';
import { Writer } from './writer.js';
import type { Store } from '../domain/store.js';

export interface OpenedStore {
  store: Store;
  migration: MigrationResult;
  close(): void;
}

/** Opens the writer, migrates, then opens the read connection: the order the read-only open needs. */
export function openStore(opts: { dbPath: string; synchronous: Synchronous; secret: string }): OpenedStore {
  const writeDb = openDatabase(opts.dbPath, { synchronous: opts.synchronous });
  let migration: MigrationResult;
  try {
    migration = migrate(writeDb);
  } catch (err) {
    writeDb.close();
    throw err;
  }
  const reader = openDatabase(opts.dbPath, { readonly: true });
  const writer = new Writer(writeDb);
  const store: Store = {
    reader,
    writer,
    secret: opts.secret,
    now: () => new Date().toISOString(),
    changes: new ChangeTracker(() => store.reader),
  };
  writer.onCommit(() => store.changes.bump());
  return {
    store,
    migration,
    close() {
      reader.close();
      writer.close();
    },
  };
}
