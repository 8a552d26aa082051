import { fstatSync, openSync, readSync } from 'node:fs';
import type { Statement } from 'better-sqlite3';
import type { Db } from '../../db/connection.js';
import { DbChecksum } from '../wire/checksum.js';
import type { PageImage, Position } from '../wire/record.js';
import { PacedSync } from '../paced-sync.js';
import { readAllPages } from '../db-pages.js';
import { parseWalHeader, scanFrames, WAL_HEADER_BYTES, type Frame, type ScanState, type WalHeader } from './wal-format.js';

export interface CapturedTx extends Position {
  pageSize: number;
  dbSize: number;
  commitTimeMs: number;
  pages: PageImage[];
  /** True for a transaction rebuilt by comparing pages, after WAL frames were lost to a checkpoint. */
  resync: boolean;
}

export interface CaptureOptions {
  dbPath: string;
  /** Two dedicated connections that take turns holding the read transaction that pins the WAL. */
  pins: [Db, Db];
  epoch: number;
  /** The position the log says the database is at, if any. */
  resumeFrom: Position | undefined;
  now?: () => number;
}

/** The most a capture reads at once before it has seen that more is there. */
const MAX_READ_BYTES = 4 * 1024 * 1024;

const pageList = (pages: Map<number, PageImage>): PageImage[] => {
  // Page 1 carries the schema cookie: it goes last (docs/HA.md).
  const list: PageImage[] = [];
  for (const p of pages.values()) if (p.pgno !== 1) list.push(p);
  const first = pages.get(1);
  if (first) list.push(first);
  return list;
};

/** A frame's page as an image of its own, for pages that must outlive the read buffer. */
const copiedPage = (f: Frame): PageImage => ({ pgno: f.pgno, data: Buffer.from(f.data), hashA: f.hashA, hashB: f.hashB });

/** Transactions up to this many frames find repeated pages by looking, not with a Map. */
const SMALL_TX_FRAMES = 32;

/**
 * A transaction's pages, each once as its last image in the transaction, page 1 last. A frame
 * serves as its own page image unless `copy` (one object less per page, at every commit).
 */
export function txPages(frames: Frame[], copy: boolean): PageImage[] {
  if (frames.length > SMALL_TX_FRAMES) {
    const pages = new Map<number, PageImage>();
    for (const f of frames) pages.set(f.pgno, copy ? copiedPage(f) : f);
    return pageList(pages);
  }
  const list: PageImage[] = [];
  let page1: PageImage | undefined;
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i]!;
    let rewritten = false;
    for (let j = i + 1; j < frames.length && !rewritten; j++) rewritten = frames[j]!.pgno === f.pgno;
    if (rewritten) continue;
    const p = copy ? copiedPage(f) : f;
    if (f.pgno === 1) page1 = p;
    else list.push(p);
  }
  if (page1) list.push(page1);
  return list;
}

/**
 * Captures committed transactions from the master's WAL file.
 *
 * A read transaction on a pin connection stops any checkpoint (ours, litestream's, the sqlite3
 * shell's) from restarting the WAL past frames not yet read. Pins leapfrog: the next pin starts
 * before the previous one ends, so there is never a moment without one. When the pins must be
 * released (to let a checkpoint through, or before waiting on a lock another process holds),
 * the next capture that finds the WAL restarted cannot know what it missed, so it rebuilds the
 * missing changes by comparing every page against the page hashes it keeps (`resync`).
 */
export class WalCapture {
  private readonly fd: number;
  /** The master's WAL at synchronous=NORMAL is otherwise only synced by checkpoints. */
  private readonly pacing = new PacedSync(100, 2 * 1024 * 1024);
  /** At synchronous=FULL or EXTRA every commit syncs the WAL already: pacing would only add flushes. */
  private readonly commitsSyncWal: boolean;
  private framesPaced = 0;
  private header: WalHeader | undefined;
  private scan: ScanState = { offset: WAL_HEADER_BYTES, cksum0: 0, cksum1: 0 };
  /** Frames of the current WAL generation read so far. */
  private framesCaptured = 0;
  /** Frames captured since our last checkpoint attempt. */
  private framesSinceCheckpoint = 0;
  /** Commit times noted by the writer's hook and not yet matched to a captured transaction. */
  private commitTimes: number[] = [];
  private commitCursor = 0;
  private readBuf = Buffer.allocUnsafeSlow(MAX_READ_BYTES);
  /** WAL bytes the previous capture consumed: the next one reads about twice that at first. */
  private lastCaptureBytes = 0;
  private activePin = -1;
  private readonly pinStatements: { begin: Statement; read: Statement; end: Statement }[];
  /** Set when the pins were released: a WAL restart seen after that may have hidden frames. */
  private lossPossible = false;
  /** Our own clean checkpoint restarted the WAL: the next new header is no surprise. */
  private restartExpected = false;
  private checksum: DbChecksum;
  private txid: number;
  private readonly epochValue: number;
  private readonly now: () => number;
  /** True when the database did not match the log at start: a new history begins. */
  readonly historyBroken: boolean;

  constructor(
    private readonly writer: Db,
    private readonly opts: CaptureOptions,
  ) {
    this.now = opts.now ?? (() => performance.timeOrigin + performance.now());
    this.epochValue = opts.epoch;
    this.pinStatements = opts.pins.map((db) => ({
      begin: db.prepare('BEGIN'),
      read: db.prepare('SELECT count(*) FROM sqlite_master'),
      end: db.prepare('ROLLBACK'),
    }));
    this.fd = openSync(`${opts.dbPath}-wal`, 'a+');
    this.commitsSyncWal = (writer.pragma('synchronous', { simple: true }) as number) >= 2;
    const pageSize = writer.pragma('page_size', { simple: true }) as number;
    this.checksum = new DbChecksum(pageSize);
    // Start under the write lock, so the WAL end, the checksum and the pin agree exactly.
    let walPages = new Map<number, PageImage>();
    this.underWriteLock(() => {
      walPages = this.readWalToEnd(true);
      let last = 0;
      for (const p of readAllPages(writer)) {
        this.checksum.setPage(p.pgno, p.data);
        last = p.pgno;
      }
      this.checksum.resize(last);
      this.pin();
    });
    const resume = opts.resumeFrom;
    this.txid = resume?.txid ?? 0;
    const behind = resume !== undefined && resume.checksum !== this.checksum.value;
    // The log lost its last records (a crash before they were written) or the database moved
    // on while we were down. Replicas never saw past the log (the stream serves only what is
    // on disk), and every page changed since the last checkpoint is in the WAL: shipping those
    // pages as one transaction brings a replica at the log's end to the database as it is.
    // Replicas verify it against the checksum, so a change that was checkpointed away unseen
    // sends them to a snapshot rather than to a wrong copy.
    this.recovery = behind && walPages.size > 0 ? this.emit(pageList(walPages), this.checksum.pageCount, false) : undefined;
    this.historyBroken = behind && !this.recovery;
  }

  /** The transaction that bridges the log to the database found at start, if one was needed. */
  readonly recovery: CapturedTx | undefined;

  get position(): Position {
    return { epoch: this.epochValue, txid: this.txid, checksum: this.checksum.value };
  }

  get pageSize(): number {
    return this.checksum.pageSize;
  }

  /** Frames captured in the current WAL (since its last restart). */
  get walFrames(): number {
    return this.framesCaptured;
  }

  /** Starts a paced fdatasync of the WAL on the thread pool (see PacedSync). */
  paceWalSync(): void {
    if (this.commitsSyncWal) return;
    // The frame count starts over with each WAL generation.
    const frames = this.framesCaptured >= this.framesPaced ? this.framesCaptured - this.framesPaced : this.framesCaptured;
    this.framesPaced = this.framesCaptured;
    this.pacing.maybe(this.fd, frames * (24 + this.checksum.pageSize));
  }

  /** WAL bytes captured since our last checkpoint attempt. */
  get uncheckpointedBytes(): number {
    return this.framesSinceCheckpoint * (24 + this.checksum.pageSize);
  }

  /**
   * The writer's hook calls this at each commit, so that transactions captured later (once per
   * turn of the event loop) still carry the time their commit happened. Matched in order; a
   * commit that wrote nothing leaves the later ones looking older, never younger.
   */
  noteCommit(timeMs: number): void {
    this.commitTimes.push(timeMs);
  }

  /**
   * Reads the frames committed since the last call and turns them into transactions, in order.
   * Call it after commits, on a timer (to catch other processes' writes), and before anything
   * that releases the pins. The hot path is one read at the scan position: the WAL header is
   * read again only when nothing new verifies there, which is also how a restart shows.
   */
  capture(): CapturedTx[] {
    // Pin before reading: from here on no frame can be checkpointed away unseen.
    if (this.activePin < 0) this.pin();
    try {
      // Pinned since the last capture, the WAL cannot have restarted past uncaptured frames:
      // whatever verifies at the scan position is next. Without the pin, the header goes first.
      const scanned = this.header !== undefined && !this.lossPossible;
      if (scanned) {
        const out = this.captureFrames(this.header!, false);
        if (out.length > 0) return out;
      }
      const header = parseWalHeader(this.readAt(0, WAL_HEADER_BYTES));
      if (!header) return [];
      if (this.header && header.salt1 === this.header.salt1 && header.salt2 === this.header.salt2) {
        this.lossPossible = false;
        return scanned ? [] : this.captureFrames(header, false);
      }
      // The WAL restarted. With a pin held throughout, every frame of the old generation was
      // read before that could happen; each restart bumps the header's checkpoint counter once.
      const skipped =
        !this.restartExpected && this.header !== undefined && header.checkpointSeq !== ((this.header.checkpointSeq + 1) >>> 0);
      this.restartExpected = false;
      if (this.lossPossible || skipped) return this.resync();
      this.header = header;
      this.scan = { offset: WAL_HEADER_BYTES, cksum0: header.cksum0, cksum1: header.cksum1 };
      this.framesCaptured = 0;
      return this.captureFrames(header, false);
    } finally {
      this.commitTimes.length = 0;
      this.commitCursor = 0;
    }
  }

  /**
   * Turns the committed frames from the scan position on into transactions. Reads until a
   * frame fails to verify or the file ends: one read when the previous capture's size fits,
   * and a read that fills the buffer goes on into a bigger one (earlier page views stay valid,
   * as the old buffer is not reused). A stale tail after a restart without truncation costs one
   * bounded read.
   */
  private captureFrames(header: WalHeader, copyPages: boolean): CapturedTx[] {
    const out: CapturedTx[] = [];
    const from = this.scan.offset;
    const frameBytes = 24 + header.pageSize;
    let want = Math.min(MAX_READ_BYTES, Math.max(2 * frameBytes, this.lastCaptureBytes * 2));
    for (;;) {
      const start = this.scan.offset;
      const bytes = this.readAt(start, want);
      const { transactions, state, hitEnd } = scanFrames(bytes, header, this.scan);
      for (const tx of transactions) {
        const pages = txPages(tx.frames, copyPages);
        for (const p of pages) this.checksum.setHash(p.pgno, p.hashA!, p.hashB!);
        this.checksum.resize(tx.dbSize);
        this.framesCaptured += tx.frames.length;
        this.framesSinceCheckpoint += tx.frames.length;
        out.push(this.emit(pages, tx.dbSize, false));
      }
      this.scan = state;
      if (hitEnd || bytes.length < want) break;
      // The buffer was full. The page views handed out point into it, so read on into a new
      // one; no progress means one transaction is larger than the read: ask for more at once.
      want = state.offset === start ? want * 2 : Math.min(MAX_READ_BYTES, want * 2);
      this.readBuf = Buffer.allocUnsafeSlow(want);
    }
    this.lastCaptureBytes = this.scan.offset - from;
    // A huge transaction once is no reason to hold its buffer for good (views into it live on
    // only until the caller has encoded them).
    if (this.readBuf.length > MAX_READ_BYTES) this.readBuf = Buffer.allocUnsafeSlow(MAX_READ_BYTES);
    return out;
  }

  /**
   * After a restart we did not pin through, the old generation's frames past our position are
   * often still in the file: a RESTART checkpoint leaves the file as it is, and the new
   * generation overwrites it only from the start. When our position lies beyond everything the
   * new generation wrote, the old frames there (same salts, our checksum chain) are exactly
   * what we missed, and the first one that fails to verify is the old generation's real end.
   * Otherwise nothing can be told, and undefined sends the caller to the full comparison.
   * Runs under the write lock, so nothing moves meanwhile.
   */
  private oldGenerationTail(): CapturedTx[] | undefined {
    const old = this.header;
    const size = fstatSync(this.fd).size;
    if (!old || size < this.scan.offset) return undefined;
    const fresh = size >= WAL_HEADER_BYTES ? parseWalHeader(this.readAt(0, WAL_HEADER_BYTES)) : undefined;
    if (!fresh) return undefined;
    const start: ScanState = { offset: WAL_HEADER_BYTES, cksum0: fresh.cksum0, cksum1: fresh.cksum1 };
    const newEnd = scanFrames(this.readAt(WAL_HEADER_BYTES, this.scan.offset - WAL_HEADER_BYTES), fresh, start).state.offset;
    const frameBytes = 24 + fresh.pageSize;
    // The new generation may have written right up to (or into) our old position.
    if (newEnd + frameBytes > this.scan.offset) return undefined;
    const missed = this.captureFrames(old, true);
    this.header = fresh;
    this.scan = start;
    this.framesCaptured = 0;
    return missed;
  }

  /**
   * Moves the pin up to the present so checkpoints can copy what has been captured. Any pin,
   * however old, keeps uncaptured frames safe; a fresh one just lets the WAL be reclaimed.
   */
  refreshPin(): CapturedTx[] {
    const captured = this.capture();
    this.pin();
    return captured;
  }

  /** Captures everything, then drops both pins so other connections may restart the WAL. */
  releasePins(): CapturedTx[] {
    const captured = this.capture();
    for (const db of this.opts.pins) if (db.inTransaction) db.exec('ROLLBACK');
    this.activePin = -1;
    this.lossPossible = true;
    return captured;
  }

  /**
   * Checkpoints the WAL ourselves, losing nothing: a RESTART checkpoint reports how many frames
   * it saw, and only when that is exactly what we captured is the restart known to be clean.
   * The file is not truncated: the next writer starts over at its beginning, so commits
   * overwrite blocks the file already has instead of growing it (a size change is a journal
   * commit in every WAL fsync), and `journal_size_limit` bounds what a big transaction left.
   * It never waits: a reader or writer in the way makes it incomplete, and the caller retries
   * later rather than stall the event loop.
   */
  checkpoint(): { captured: CapturedTx[]; complete: boolean } {
    const captured = this.releasePins();
    if (this.framesCaptured === 0) {
      this.lossPossible = false;
      this.pin();
      return { captured, complete: true };
    }
    const previous = this.writer.pragma('busy_timeout', { simple: true }) as number;
    this.writer.pragma('busy_timeout = 0');
    let r: { busy: number; log: number; checkpointed: number };
    try {
      r = (this.writer.pragma('wal_checkpoint(RESTART)') as (typeof r)[])[0]!;
    } finally {
      this.writer.pragma(`busy_timeout = ${previous}`);
    }
    const sawOnlyCaptured = r.log === this.framesCaptured;
    const complete = r.busy === 0 && sawOnlyCaptured && r.checkpointed === r.log;
    this.pin();
    // Frames another process committed after our capture may have been copied and may be
    // dropped by the next restart: only then does that restart need the page comparison.
    this.lossPossible = !sawOnlyCaptured;
    if (complete) this.restartExpected = true;
    // Incomplete or not, the next attempt comes one step later, not at every capture.
    this.framesSinceCheckpoint = 0;
    return { captured, complete };
  }

  close(): void {
    for (const db of this.opts.pins) if (db.inTransaction) db.exec('ROLLBACK');
    this.pacing.close(this.fd);
  }

  private emit(pages: PageImage[], dbSize: number, resync: boolean): CapturedTx {
    this.txid += 1;
    return {
      epoch: this.epochValue,
      txid: this.txid,
      checksum: this.checksum.value,
      pageSize: this.checksum.pageSize,
      dbSize,
      commitTimeMs: this.commitCursor < this.commitTimes.length ? this.commitTimes[this.commitCursor++]! : this.now(),
      pages,
      resync,
    };
  }

  /**
   * Frames may have been checkpointed away unseen. Under the write lock (so nothing moves),
   * compare every page with the hashes kept and turn the differences into one transaction,
   * then continue from the end of the current WAL.
   */
  private resync(): CapturedTx[] {
    // Waiting for the write lock while pinned is the litestream stall trap (docs/HA.md): a
    // checkpointer holding the lock may be waiting for our reader. Drop the pins first.
    if (!this.writer.inTransaction) {
      for (const db of this.opts.pins) if (db.inTransaction) db.exec('ROLLBACK');
      this.activePin = -1;
    }
    return this.underWriteLock(() => {
      const missed = this.oldGenerationTail();
      if (missed) {
        this.lossPossible = false;
        this.pin();
        return missed.concat(this.captureFrames(this.header!, false));
      }
      const changed = new Map<number, PageImage>();
      const probe = new DbChecksum(this.checksum.pageSize);
      let last = 0;
      for (const p of readAllPages(this.writer)) {
        last = p.pgno;
        probe.setPage(p.pgno, p.data);
        const [a, b] = probe.hashOf(p.pgno)!;
        const known = this.checksum.hashOf(p.pgno);
        if (!known || known[0] !== a || known[1] !== b) changed.set(p.pgno, { pgno: p.pgno, data: p.data, hashA: a, hashB: b });
      }
      this.readWalToEnd();
      this.lossPossible = false;
      this.pin();
      if (changed.size === 0 && last === this.checksum.pageCount) return [];
      for (const p of changed.values()) this.checksum.setHash(p.pgno, p.hashA!, p.hashB!);
      this.checksum.resize(last);
      return [this.emit(pageList(changed), last, true)];
    });
  }

  /**
   * Runs `fn` holding the write lock: inside the writer's transaction when it has one, else in
   * a fresh IMMEDIATE one. Callers drop their pins before this may wait, so it cannot deadlock
   * with a checkpointer waiting on our readers.
   */
  private underWriteLock<T>(fn: () => T): T {
    if (this.writer.inTransaction) return fn();
    const previous = this.writer.pragma('busy_timeout', { simple: true }) as number;
    this.writer.pragma('busy_timeout = 5000');
    try {
      return this.writer.transaction(fn).immediate();
    } finally {
      this.writer.pragma(`busy_timeout = ${previous}`);
    }
  }

  /**
   * Moves the scan state to the end of the committed frames without emitting anything; with
   * `collect`, returns (copies of) the latest image of every page those frames hold.
   */
  private readWalToEnd(collect = false): Map<number, PageImage> {
    const pages = new Map<number, PageImage>();
    const size = fstatSync(this.fd).size;
    const header = size >= WAL_HEADER_BYTES ? parseWalHeader(this.readAt(0, WAL_HEADER_BYTES)) : undefined;
    this.header = header;
    this.framesCaptured = 0;
    if (!header) {
      this.scan = { offset: WAL_HEADER_BYTES, cksum0: 0, cksum1: 0 };
      return pages;
    }
    const from: ScanState = { offset: WAL_HEADER_BYTES, cksum0: header.cksum0, cksum1: header.cksum1 };
    const { transactions, state } = scanFrames(this.readAt(WAL_HEADER_BYTES, size - WAL_HEADER_BYTES), header, from);
    for (const tx of transactions) {
      this.framesCaptured += tx.frames.length;
      if (collect) for (const f of tx.frames) pages.set(f.pgno, copiedPage(f));
    }
    this.scan = state;
    return pages;
  }

  private readAt(offset: number, length: number): Buffer {
    if (length <= 0) return Buffer.alloc(0);
    if (this.readBuf.length < length) this.readBuf = Buffer.allocUnsafeSlow(Math.max(length, this.readBuf.length * 2));
    const n = readSync(this.fd, this.readBuf, 0, length, offset);
    // Page views handed out point into this buffer; records copy them before the next read.
    return this.readBuf.subarray(0, n);
  }

  /** Starts a read transaction on the idle pin, then ends the other one: never zero pins. */
  private pin(): void {
    const next = this.activePin === 0 ? 1 : 0;
    const s = this.pinStatements[next]!;
    if (this.opts.pins[next].inTransaction) s.end.run();
    s.begin.run();
    s.read.get();
    if (this.activePin >= 0 && this.opts.pins[this.activePin]!.inTransaction) this.pinStatements[this.activePin]!.end.run();
    this.activePin = next;
  }
}
