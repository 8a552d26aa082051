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
  const node = new NodeStore(opts.secret);
  const migration = node.openForWrites(opts.dbPath, opts.synchronous);
  return { store: node.store, migration, close: () => node.close() };
}

/**
 * The one Store a server hands its routes, whose connections follow the node's role: a master
 * reads and writes its own file; a replica reads the copy the applier maintains (once it has
 * one) and refuses writes. The object stays the same across promotions and demotions, so routes,
 * caches and commit hooks never hold a connection that was closed under them.
 */
export class NodeStore {
  readonly store: Store;
  private readonly placeholder: Db = openDatabase(':memory:');
  private reader: Db | undefined;

  constructor(secret: string) {
    const writer = new Writer();
    const store: Store = {
      reader: this.placeholder,
      writer,
      secret,
      now: () => new Date().toISOString(),
      changes: new ChangeTracker(() => store.reader),
    };
    writer.onCommit(() => store.changes.bump());
    this.store = store;
  }

  /** Opens the write connection (migrating the schema), then reads from the same file. */
  openForWrites(dbPath: string, synchronous: Synchronous): MigrationResult {
    const writeDb = openDatabase(dbPath, { synchronous });
    let migration: MigrationResult;
    try {
      migration = migrate(writeDb);
    } catch (err) {
      writeDb.close();
      throw err;
    }
    this.store.writer.attach(writeDb);
    this.readFrom(dbPath);
    return migration;
  }

  /** Closes the write connection; writes are refused with `reason` from now on. */
  closeForWrites(reason: string): void {
    this.store.writer.detach(reason)?.close();
  }

  /** Points reads at `dbPath` (a replica's copy, after a snapshot or at start), or away from any file. */
  readFrom(dbPath: string | undefined): void {
    this.reader?.close();
    this.reader = dbPath === undefined ? undefined : openDatabase(dbPath, { readonly: true });
    this.store.reader = this.reader ?? this.placeholder;
    this.store.changes.bump();
  }

  close(): void {
    this.closeForWrites('the server is shutting down');
    this.readFrom(undefined);
    this.placeholder.close();
  }
}
