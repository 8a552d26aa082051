import { existsSync } from 'node:fs';
import type { Statement } from 'better-sqlite3';
import type { Db } from '../../db/connection.js';
import { BackgroundCheckpointer, FINAL_STEP_PAGES, MAX_BACKGROUND_PASSES } from '../background-checkpointer.js';
import { imageStamp, openApplierConnection, StampFollower } from './page-one-stamps.js';
import { readAllPages } from '../db-pages.js';
import { DbChecksum, pageHash } from '../wire/checksum.js';
import { applyDelta } from '../wire/page-delta.js';
import { isDelta, type PageEntry, type Position, type TxRecord } from '../wire/record.js';
import { PositionFile } from './position-file.js';
import { WalSync } from './wal-sync.js';

/** SQLite binds at most 32766 variables; two per row. */
const MAX_ROWS_PER_STATEMENT = 16_000;
/** After a crash left the position file behind the copy, this many records may be re-applied unverified. */
const MAX_RECOVERY_RECORDS = 100_000;
/** Pages written between checkpoints of the copy's WAL (SQLite's own autocheckpoint step). */
const CHECKPOINT_PAGES = 1000;

export class ApplyError extends Error {}

/**
 * Applies the master's transactions to the replica's copy, on one dedicated connection in
 * unsafe mode (sqlite_dbpage writes need it). A batch of transactions goes in one SQLite
 * transaction (group commit); each transaction is still verified against its checksum, and one
 * that does not verify rolls back the whole batch.
 *
 * Two positions, as a database replica's applied and flushed positions: `position` is what
 * readers see (the commit runs at synchronous=NORMAL, so it is visible at once), and
 * `durablePosition` is what is on disk. makeDurable() moves the second up to the first with one
 * fdatasync of the WAL on the thread pool, then writes the position file (see PositionFile for
 * why that write needs no fsync of its own). Only the durable position is acknowledged.
 */
export class Applier {
  private readonly db: Db;
  private readonly positionFile: PositionFile;
  private readonly checksum: DbChecksum;
  private pos: Position;
  private durable: Position;
  private readonly walSync: WalSync;
  private broken = false;
  /** The file was ahead of the position file (a crash between the two writes). */
  private recovering: number;
  private readonly statements = new Map<number, Statement>();
  private pagesSinceCheckpoint = 0;
  /** The images the last group wrote: the bases of the next group's deltas, without a read. */
  private lastWritten = new Map<number, Buffer>();
  private readonly arenas: [PageArena, PageArena];
  private readPage: Statement | undefined;

  private readonly stamps: StampFollower;

  private background: BackgroundCheckpointer | undefined;
  private closed = false;

  private constructor(
    private readonly dbPath: string,
    db: Db,
    positionFile: PositionFile,
    checksum: DbChecksum,
    pos: Position,
    recovering: boolean,
    fileStamp: number,
    warn: (msg: string) => void,
  ) {
    this.db = db;
    // SQLite's autocheckpoint would run inside the commit of the batch that crosses the step,
    // delaying that batch's position write and ack; checkpointIfDue() runs it after instead.
    db.pragma('wal_autocheckpoint = 0');
    this.stamps = new StampFollower(db, fileStamp, warn);
    this.positionFile = positionFile;
    this.checksum = checksum;
    this.pos = pos;
    this.durable = pos;
    this.walSync = new WalSync(dbPath);
    this.recovering = recovering ? MAX_RECOVERY_RECORDS : 0;
    const pageSize = checksum.pageSize;
    this.arenas = [new PageArena(pageSize), new PageArena(pageSize)];
  }

  /**
   * Opens an existing copy and checks it against the stored position. Undefined when there is
   * no usable copy (the caller takes a snapshot).
   */
  static open(
    dbPath: string,
    stateFile: string,
    warn: (msg: string) => void,
    known?: { checksum: DbChecksum; position: Position },
  ): Applier | undefined {
    if (!existsSync(dbPath) || !existsSync(stateFile)) return undefined;
    const positionFile = new PositionFile(stateFile);
    const stored = positionFile.read();
    if (!stored) {
      positionFile.close();
      return undefined;
    }
    const { db, fileStamp } = openApplierConnection(dbPath);
    let checksum = known?.checksum;
    if (!checksum) {
      checksum = new DbChecksum(db.pragma('page_size', { simple: true }) as number);
      let last = 0;
      for (const p of readAllPages(db)) {
        checksum.setPage(p.pgno, p.data);
        last = p.pgno;
      }
      checksum.resize(last);
    }
    return new Applier(dbPath, db, positionFile, checksum, stored, checksum.value !== stored.checksum, fileStamp, warn);
  }

  /** Starts a copy from a snapshot that was just put in place. */
  static fromSnapshot(dbPath: string, stateFile: string, warn: (msg: string) => void, checksum: DbChecksum, position: Position): Applier {
    const positionFile = new PositionFile(stateFile);
    positionFile.write(position);
    positionFile.close();
    return Applier.open(dbPath, stateFile, warn, { checksum, position })!;
  }

  /** The newest applied transaction: what readers of the copy see. */
  get position(): Position {
    return this.pos;
  }

  /** The newest transaction whose pages and position are on disk: what may be acknowledged. */
  get durablePosition(): Position {
    return this.durable;
  }

  get isBroken(): boolean {
    return this.broken;
  }

  /**
   * The file is ahead of the position file (a crash between a commit and its position write) and
   * the records from there are being checked against it, not written: until one's checksum
   * equals the file's, the copy is not known to be right and must not be served.
   */
  get isRecovering(): boolean {
    return this.recovering > 0;
  }

  /**
   * Applies consecutive transactions, verifying each; throws ApplyError (and marks the copy
   * broken) if one does not fit. Returns once readers can see them; makeDurable() puts them on
   * disk.
   */
  apply(records: TxRecord[]): Position {
    if (this.broken) throw new ApplyError('the copy is known to be wrong; it needs a snapshot');
    if (records.length === 0) return this.pos;
    try {
      for (const group of commitGroups(records)) this.applyGroup(group);
    } catch (err) {
      // The page hashes moved with pages that were rolled back: only a snapshot can make this
      // copy trustworthy again.
      this.broken = true;
      throw err instanceof ApplyError ? err : new ApplyError(`apply failed: ${(err as Error).message}`);
    }
    return this.pos;
  }

  /**
   * Puts every transaction applied so far on disk (one fdatasync of the WAL, on the thread pool)
   * and then records its position. Resolves with the durable position. Batches applied while
   * it runs wait for the next call.
   */
  async makeDurable(): Promise<Position> {
    const target = this.pos;
    if (target === this.durable || this.closed) return this.durable;
    await this.walSync.sync();
    // The copy may have been closed (a snapshot replaces it) while the sync ran.
    if (this.closed || target.txid <= this.durable.txid) return this.durable;
    this.positionFile.write(target);
    this.durable = target;
    return target;
  }

  /** Whether enough has been written since the last checkpoint to run one. */
  get checkpointDue(): boolean {
    return this.pagesSinceCheckpoint >= CHECKPOINT_PAGES;
  }

  /**
   * Copies the WAL into the database file, never waiting for readers (PASSIVE checkpoints), so
   * a later commit can start the WAL over: most of it on the checkpoint thread while batches go
   * on, then what those batches added, here. Call it after a batch is durable and reported.
   */
  async checkpoint(): Promise<void> {
    // Created on first use, so a copy that is opened and closed again costs no thread.
    this.background ??= new BackgroundCheckpointer(this.dbPath, 'FULL');
    try {
      for (let pass = 0; pass < MAX_BACKGROUND_PASSES && this.pagesSinceCheckpoint > FINAL_STEP_PAGES; pass++) {
        this.pagesSinceCheckpoint = 0;
        if ((await this.background.passive()).busy !== 0) break;
      }
    } finally {
      // Also when the thread failed: then this one does all the copying, as before it existed.
      this.pagesSinceCheckpoint = 0;
      if (!this.closed) this.db.pragma('wal_checkpoint(PASSIVE)');
    }
  }

  /**
   * Verifies a group's transactions one by one against the page hashes, then writes the pages
   * in ONE autocommit statement: the newest image of each page, page 1 last, and the truncation
   * row (size + 1, NULL) last when the database shrinks. Inside an explicit transaction SQLite
   * re-reads the page count from page 1 when the statement ends and then truncates nothing:
   * the freed pages would stay in the file, which would no longer be byte-identical.
   */
  private applyGroup(records: TxRecord[]): void {
    let pos = this.pos;
    let recovering = this.recovering;
    // Readers see only the group's commit, so each page is written once, as the group's last
    // transaction to touch it left it: consecutive small transactions mostly rewrite the same
    // few pages, and writing every image made the apply cost grow with the batch.
    const latest = new Map<number, Buffer>();
    // Deltas are rebuilt into this group's arena; the other one holds lastWritten's images.
    const arena = this.arenas[0];
    arena.reset();
    let shrinkTo: number | undefined;
    for (const r of records) {
      if (r.txid !== pos.txid + 1) throw new ApplyError(`expected txid ${pos.txid + 1}, got ${r.txid}`);
      if (r.epoch < pos.epoch) throw new ApplyError(`txid ${r.txid} comes from epoch ${r.epoch}, older than ${pos.epoch}`);
      // Replaying from the position file up to the file's own state only moves the checksum: the
      // file already holds those transactions (the one whose checksum matches included), and
      // writing their older page images would show readers states that never were. The pages'
      // hashes come with the record, so a delta needs no base for that.
      const write = recovering === 0;
      // A shrinking transaction writes page 1 (the page count lives there), so it ends its group.
      shrinkTo = write && r.dbSize < this.checksum.pageCount ? r.dbSize : undefined;
      for (const p of r.pages) {
        if (write) latest.set(p.pgno, this.imageOf(p, r.pageSize, latest, arena));
        if (isDelta(p)) this.checksum.setHash(p.pgno, p.hashA, p.hashB);
        else if (p.hashA !== undefined && p.hashB !== undefined) this.checksum.setHash(p.pgno, p.hashA, p.hashB);
        else this.checksum.setPage(p.pgno, p.data);
      }
      this.checksum.resize(r.dbSize);
      if (this.checksum.value === r.checksum) recovering = 0;
      else if (recovering > 0) recovering--;
      else throw new ApplyError(`checksum mismatch after txid ${r.txid}: have ${this.checksum.value}, master has ${r.checksum}`);
      pos = { epoch: r.epoch, txid: r.txid, checksum: r.checksum };
    }
    // Page 1 last (only the group's last transaction writes it), then the truncation row.
    const page1 = latest.get(1);
    const rows: (number | Buffer | null)[] = [];
    for (const [pgno, data] of latest) if (pgno !== 1) rows.push(pgno, data);
    if (page1) rows.push(1, page1);
    if (shrinkTo !== undefined) rows.push(shrinkTo + 1, null);
    this.pagesSinceCheckpoint += rows.length / 2;
    if (page1) this.stamps.prepare(imageStamp(page1));
    this.writeRows(rows);
    if (page1) this.stamps.committed();
    // Past a shrink the pages are gone: a later delta for one of them must not find it here.
    if (shrinkTo !== undefined) for (const pgno of latest.keys()) if (pgno > shrinkTo) latest.delete(pgno);
    if (latest.size > 0 || shrinkTo !== undefined) {
      this.lastWritten = latest;
      this.arenas.reverse();
    }
    this.pos = pos;
    this.recovering = recovering;
  }

  /**
   * A page's new image: a whole page as it came, a delta rebuilt on the page as the previous
   * transaction left it (this group's, the last group's, or the file's) and checked against the
   * hash the master sent. A base that is missing or gives another page means the copy is not
   * what the master thinks it is.
   */
  private imageOf(p: PageEntry, pageSize: number, latest: Map<number, Buffer>, arena: PageArena): Buffer {
    if (!isDelta(p)) return p.data;
    const base = latest.get(p.pgno) ?? this.lastWritten.get(p.pgno) ?? this.fileImage(p.pgno);
    if (!base || base.length !== pageSize) throw new ApplyError(`page ${p.pgno} came as a delta, but the copy has no such page`);
    let image: Buffer;
    try {
      image = applyDelta(base, p.delta, arena.take());
    } catch (err) {
      throw new ApplyError(`page ${p.pgno}: ${(err as Error).message}`);
    }
    const [a, b] = pageHash(p.pgno, image);
    if (a !== p.hashA || b !== p.hashB) throw new ApplyError(`page ${p.pgno} does not match the master's after its delta: the copy has diverged`);
    return image;
  }

  private fileImage(pgno: number): Buffer | undefined {
    this.readPage ??= this.db.prepare('SELECT data FROM sqlite_dbpage WHERE pgno = ?').pluck();
    return this.readPage.get(pgno) as Buffer | undefined;
  }

  /** One statement, one commit: inline when the rows fit SQLite's bind limit, staged in a temp table otherwise. */
  private writeRows(args: (number | Buffer | null)[]): void {
    const rows = args.length / 2;
    if (rows === 0) return;
    if (rows <= MAX_ROWS_PER_STATEMENT) {
      this.statementFor(rows).run(...args);
      return;
    }
    this.db.exec('CREATE TEMP TABLE IF NOT EXISTS apply_rows (seq INTEGER PRIMARY KEY, pgno INTEGER NOT NULL, data BLOB)');
    const stage = this.db.prepare('INSERT INTO temp.apply_rows (pgno, data) VALUES (?, ?)');
    this.db.transaction(() => {
      for (let i = 0; i < args.length; i += 2) stage.run(args[i], args[i + 1]);
    })();
    try {
      this.db.prepare('INSERT INTO main.sqlite_dbpage (pgno, data) SELECT pgno, data FROM temp.apply_rows ORDER BY seq').run();
    } finally {
      this.db.exec('DELETE FROM temp.apply_rows');
    }
  }

  /**
   * Closes the copy. Resolves once the checkpoint thread has closed its connection too: the
   * last connection to close deletes the WAL by its name, which must not happen after another
   * file (a snapshot) has taken that name.
   */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    // A clean stop leaves the position file at the copy's position, so the next start has
    // nothing to replay. A broken copy's position is still its last verified one (a group that
    // fails writes nothing).
    if (this.pos !== this.durable) {
      try {
        this.walSync.syncNow();
        this.positionFile.write(this.pos);
        this.durable = this.pos;
      } catch {
        // The position file stays behind the copy: the next start replays from it and checks.
      }
    }
    this.positionFile.close();
    this.db.close();
    return Promise.all([this.walSync.close(), this.background?.close()]).then(() => undefined);
  }

  private statementFor(rows: number): Statement {
    let s = this.statements.get(rows);
    if (!s) {
      s = this.db.prepare(`INSERT INTO sqlite_dbpage(pgno, data) VALUES ${Array(rows).fill('(?, ?)').join(', ')}`);
      // Small transactions repeat the same few shapes; big ones are rare and not worth keeping.
      if (rows <= 64) this.statements.set(rows, s);
    }
    return s;
  }
}

/**
 * Page buffers for rebuilt deltas, reused group after group: a new buffer per page was 80 MB/s
 * of allocations at 10,000 commits/s, and memory outside the heap that only a full garbage
 * collection frees. A buffer outgrown stays alive as long as images in it are referenced.
 */
class PageArena {
  private buf: Buffer;
  private used = 0;

  constructor(private readonly pageSize: number) {
    this.buf = Buffer.allocUnsafeSlow(pageSize * 16);
  }

  reset(): void {
    this.used = 0;
  }

  take(): Buffer {
    if (this.used + this.pageSize > this.buf.length) {
      this.buf = Buffer.allocUnsafeSlow(this.buf.length * 2);
      this.used = 0;
    }
    const page = this.buf.subarray(this.used, this.used + this.pageSize);
    this.used += this.pageSize;
    return page;
  }
}

/**
 * Splits a batch so that each SQLite commit holds at most one transaction that writes page 1,
 * and ends with it. SQLite stamps page 1 with (change counter at the start + 1) at every
 * commit that dirties it; one page-1 transaction per commit keeps the replica's stamps equal
 * to the master's, so the files stay byte-identical.
 */
export function commitGroups(records: TxRecord[]): TxRecord[][] {
  const groups: TxRecord[][] = [];
  let current: TxRecord[] = [];
  for (const r of records) {
    current.push(r);
    if (r.pages.some((p) => p.pgno === 1)) {
      groups.push(current);
      current = [];
    }
  }
  if (current.length > 0) groups.push(current);
  return groups;
}
