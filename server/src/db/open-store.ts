import { ChangeTracker } from './change-tracker.js';
import { openDatabase, type Db, type Synchronous } from './connection.js';
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

export interface ReplicaStore {
  store: Store;
  /** Points reads at the replica's copy (after a snapshot or at start), or away from it. */
  useCopy(available: boolean): void;
  close(): void;
}

/**
 * A replica's store: reads come from the copy the applier maintains, once there is one; the
 * writer refuses everything (writes go to the master). Nothing here migrates: the schema is
 * whatever the master's pages say.
 */
export function openReplicaStore(opts: { dbPath: string; secret: string }): ReplicaStore {
  const placeholder = openDatabase(':memory:');
  const writer = new Writer(openDatabase(':memory:'));
  writer.refuse('this node is a replica; writes go to the master');
  const store: Store = {
    reader: placeholder,
    writer,
    secret: opts.secret,
    now: () => new Date().toISOString(),
    changes: new ChangeTracker(() => store.reader),
  };
  let copy: Db | undefined;
  return {
    store,
    useCopy(available) {
      if (copy) copy.close();
      copy = available ? openDatabase(opts.dbPath, { readonly: true }) : undefined;
      store.reader = copy ?? placeholder;
      store.changes.bump();
    },
    close() {
      copy?.close();
      placeholder.close();
      writer.close();
    },
  };
}
