import Database from 'better-sqlite3';
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface WriterLockOptions {
  /** This server's NEBULAGC_NODE_ID, for the message a second would-be writer gets. */
  nodeId?: string;
}

/** Who holds the lock, as the holder wrote it down. Informational only: the lock is the truth. */
interface HolderInfo {
  pid?: number;
  hostname?: string;
  node_id?: string;
  acquired_at?: string;
}

/** Thrown by WriterLock.acquire() when another connection (this process or another) is the writer. */
export class WriterLockHeldError extends Error {
  constructor(
    message: string,
    readonly dbPath: string,
    readonly holderPid: number | undefined,
  ) {
    super(message);
    this.name = 'WriterLockHeldError';
  }
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  // better-sqlite3 reports extended codes (SQLITE_BUSY_RECOVERY and the like).
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'));
}

function readHolder(file: string): HolderInfo | undefined {
  try {
    const parsed: unknown = JSON.parse(readFileSync(file, 'utf8'));
    return parsed !== null && typeof parsed === 'object' ? (parsed as HolderInfo) : undefined;
  } catch {
    return undefined;
  }
}

function describeHolder(holder: HolderInfo | undefined, infoFile: string): string {
  const pid = typeof holder?.pid === 'number' ? holder.pid : undefined;
  if (!holder || pid === undefined) return `another process (no holder details in ${infoFile})`;
  const parts = [holder.hostname ? `pid ${pid} on host ${holder.hostname}` : `pid ${pid}`];
  if (holder.node_id) parts.push(`node ${holder.node_id}`);
  if (holder.acquired_at) parts.push(`since ${holder.acquired_at}`);
  const self = pid === process.pid && holder.hostname === os.hostname();
  return `${self ? 'this process' : 'another process'} (${parts.join(', ')})`;
}

/**
 * An exclusive, OS-level lock beside the database, held by the one process allowed to write it.
 *
 * Node has no flock(), and a native addon only for this is not worth it, so the lock is SQLite's
 * own POSIX (fcntl) locking on a tiny side database, taken through better-sqlite3: in
 * `locking_mode = EXCLUSIVE` a connection that has written never gives its EXCLUSIVE lock back
 * until it closes. The kernel drops fcntl locks when the process dies, kill -9 included, so a
 * crashed master never leaves a lock behind that someone has to clear by hand.
 *
 * SQLite also tracks locks per inode inside the process, so a second connection from the same
 * process is refused too (plain fcntl locks would let it through).
 *
 * The lock file must never be opened by anything but SQLite in this process: closing any other
 * descriptor on it would silently drop the process's fcntl locks (a POSIX rule SQLite works
 * around for its own descriptors only). It is also never deleted: a process blocked on the old
 * inode and a newcomer creating a fresh file could then both "hold" it.
 */
export class WriterLock {
  private db: Database.Database | undefined;

  private constructor(
    readonly dbPath: string,
    readonly lockPath: string,
    readonly infoPath: string,
    db: Database.Database,
  ) {
    this.db = db;
  }

  static acquire(dbPath: string, opts: WriterLockOptions = {}): WriterLock {
    const resolved = path.resolve(dbPath);
    const lockPath = `${resolved}-writer.lock`;
    const infoPath = `${lockPath}.json`;
    mkdirSync(path.dirname(resolved), { recursive: true });

    // timeout 0 is busy_timeout = 0: a held lock must be reported now, not waited for.
    const db = new Database(lockPath, { timeout: 0 });
    try {
      db.pragma('locking_mode = EXCLUSIVE');
      // The first statement takes the EXCLUSIVE lock before anything reads the file, so a busy
      // lock fails here rather than somewhere less obvious. The row makes this a real write,
      // which is what keeps the lock for the life of the connection in exclusive mode.
      db.exec('BEGIN EXCLUSIVE');
      db.exec('CREATE TABLE IF NOT EXISTS writer (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, acquired_at TEXT NOT NULL)');
      db.prepare('INSERT OR REPLACE INTO writer (id, pid, acquired_at) VALUES (1, ?, ?)').run(process.pid, new Date().toISOString());
      db.exec('COMMIT');
    } catch (err) {
      db.close();
      if (!isBusy(err)) throw err;
      // The holder's details live in a separate file because the row above cannot be read by
      // anyone while the lock is held: that is the point of the lock.
      const holder = readHolder(infoPath);
      throw new WriterLockHeldError(
        `${describeHolder(holder, infoPath)} is the writer of ${resolved}: a second master on the same database files ` +
          'would corrupt them; stop it first, or point NEBULAGC_DB_PATH elsewhere',
        resolved,
        typeof holder?.pid === 'number' ? holder.pid : undefined,
      );
    }

    const info: HolderInfo = { pid: process.pid, hostname: os.hostname(), acquired_at: new Date().toISOString() };
    if (opts.nodeId !== undefined) info.node_id = opts.nodeId;
    try {
      // Whatever a dead holder left there is simply replaced; write-then-rename so that a
      // refused process never reads half a file, and the mode is ours even if the old one was not.
      const tmp = `${infoPath}.${process.pid}.tmp`;
      writeFileSync(tmp, `${JSON.stringify(info)}\n`, { mode: 0o600 });
      chmodSync(tmp, 0o600);
      renameSync(tmp, infoPath);
    } catch (err) {
      // Holding a lock that the caller thinks it did not get would block everyone for nothing.
      db.close();
      throw err;
    }
    return new WriterLock(resolved, lockPath, infoPath, db);
  }

  get held(): boolean {
    return this.db !== undefined;
  }

  /** Gives the lock up. Idempotent. */
  release(): void {
    const db = this.db;
    if (!db) return;
    this.db = undefined;
    // Remove the details while still holding the lock, so they never describe the next holder.
    rmSync(this.infoPath, { force: true });
    db.close();
  }
}
