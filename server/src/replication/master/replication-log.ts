import { mkdirSync, openSync, readdirSync, readFileSync, statSync, unlinkSync, writevSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Checksum } from '../wire/checksum.js';
import { LogIndex } from './log-index.js';
import { PacedSync } from '../paced-sync.js';
import { decodeRecord, RECORD_TX, RecordFramer, type Position } from '../wire/record.js';

export interface LogLimits {
  /** Bytes of segment files kept on disk. */
  maxBytes: number;
  /** Age beyond which whole segments are dropped. */
  maxAgeMs: number;
  /** Bytes of recent records also kept in memory, so live replicas never touch the disk. */
  memoryBytes: number;
  segmentBytes: number;
}

interface Segment {
  file: string;
  firstTxid: number;
  bytes: number;
  newestTimeMs: number;
}

const SEGMENT = /^seg-(\d{16})\.log$/;
const MAX_RECORD_BYTES = 1 << 30;
/** Records are encoded into slabs this big; a bigger record gets a buffer of its own. */
const SLAB_BYTES = 4 * 1024 * 1024;
/** The segment file being written is fdatasynced this often, unless written faster (see PacedSync). */
const SYNC_EVERY_MS = 100;
const SYNC_MAX_BYTES = 2 * 1024 * 1024;

/**
 * The master's recent transactions, as sealed records: in memory for live replicas and in
 * segment files for replicas that reconnect (or a master that restarts). Transaction ids are
 * consecutive, so a txid is found by arithmetic. A replica asking for something older than the
 * first entry gets a snapshot instead.
 */
export class ReplicationLog {
  private readonly index = new LogIndex();
  private segments: Segment[] = [];
  private fd: number | undefined;
  private readonly pacing = new PacedSync(SYNC_EVERY_MS, SYNC_MAX_BYTES);
  private pending: Buffer[] = [];
  private slab = Buffer.allocUnsafeSlow(0);
  private slabUsed = 0;
  private flushScheduled = false;
  private memoryBytes = 0;
  /** The oldest txid whose record may still be in memory. */
  private memoryFrom = 0;
  private cumulative = 0;
  /** The last txid written to a segment file: replicas are streamed nothing past it. */
  durableTxid: number | undefined;
  /** Called after appended records reach the segment file. */
  onFlushed: (() => void) | undefined;
  /** After loading, appends go to a new segment: the last file may end in a torn record. */
  private needFreshSegment = true;

  constructor(
    private readonly dir: string,
    private readonly limits: LogLimits,
  ) {
    mkdirSync(dir, { recursive: true });
    this.load();
  }

  get first(): number | undefined {
    return this.index.first;
  }

  get last(): Position | undefined {
    const txid = this.index.last;
    return txid === undefined ? undefined : { epoch: this.index.epoch(txid), txid, checksum: this.index.checksum(txid) };
  }

  get diskBytes(): number {
    return this.segments.reduce((n, s) => n + s.bytes, 0);
  }

  /** The checksum after `txid`, while the log holds it. */
  checksumAt(txid: number): Checksum | undefined {
    return this.index.has(txid) ? this.index.checksum(txid) : undefined;
  }

  /** The newest logged position whose checksum is `checksum`: where a copy with that content sits in the log. */
  positionWithChecksum(checksum: Checksum): Position | undefined {
    const first = this.index.first;
    const last = this.index.last;
    if (first === undefined || last === undefined) return undefined;
    for (let t = last; t >= first; t--) if (this.index.checksum(t) === checksum) return { epoch: this.index.epoch(t), txid: t, checksum };
    return undefined;
  }

  commitTimeOf(txid: number): number | undefined {
    return this.index.has(txid) ? this.index.commitTimeMs(txid) : undefined;
  }

  /** Record bytes from just after `fromTxid` through `toTxid`: how far behind a replica is. */
  bytesBetween(fromTxid: number, toTxid: number): number {
    const ix = this.index;
    if (!ix.has(toTxid)) return 0;
    const first = ix.first!;
    const base = ix.has(fromTxid) ? ix.cumulative(fromTxid) : ix.cumulative(first) - ix.bytes(first);
    return Math.max(0, ix.cumulative(toTxid) - base);
  }

  /**
   * Room for a record of `bytes`, to encode it in place and then append() it: consecutive
   * records share one slab, so a flush writes them with one system call and no copy, and
   * memory is not one allocation per record.
   */
  reserve(bytes: number): Buffer {
    if (bytes > SLAB_BYTES / 4) return Buffer.allocUnsafeSlow(bytes);
    if (this.slabUsed + bytes > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.slabUsed = 0;
    }
    const buf = this.slab.subarray(this.slabUsed, this.slabUsed + bytes);
    this.slabUsed += bytes;
    return buf;
  }

  append(pos: Position & { commitTimeMs: number }, buf: Buffer): void {
    const lastTxid = this.index.last;
    if (lastTxid !== undefined && pos.txid !== lastTxid + 1) throw new Error(`log expected txid ${lastTxid + 1}, got ${pos.txid}`);
    let seg = this.segments[this.segments.length - 1];
    if (!seg || seg.bytes >= this.limits.segmentBytes || this.needFreshSegment) {
      seg = this.openSegment(pos.txid);
      this.needFreshSegment = false;
    }
    this.cumulative += buf.length;
    this.index.push(pos.txid, {
      epoch: pos.epoch,
      checksum: pos.checksum,
      commitTimeMs: pos.commitTimeMs,
      bytes: buf.length,
      cumulative: this.cumulative,
      segment: seg.firstTxid,
      buf,
    });
    seg.bytes += buf.length;
    seg.newestTimeMs = pos.commitTimeMs;
    this.memoryBytes += buf.length;
    // Records reserved one after the other in a slab are one range to write.
    const tail = this.pending[this.pending.length - 1];
    if (tail && tail.buffer === buf.buffer && tail.byteOffset + tail.length === buf.byteOffset) {
      this.pending[this.pending.length - 1] = Buffer.from(tail.buffer, tail.byteOffset, tail.length + buf.length);
    } else this.pending.push(buf);
    this.scheduleFlush();
    this.trimMemory();
  }

  /** Sealed records after `txid`, oldest first; undefined if the log no longer reaches back that far. */
  *recordsAfter(txid: number): Generator<Buffer> {
    const first = this.first;
    if (first === undefined || txid < first - 1) return;
    let diskSegment: Segment | undefined;
    let diskRecords = new Map<number, Buffer>();
    for (let t = txid + 1; t <= (this.index.last ?? -1); t++) {
      const inMemory = this.index.buf(t);
      if (inMemory) {
        yield inMemory;
        continue;
      }
      const segment = this.index.segment(t);
      if (diskSegment?.firstTxid !== segment) {
        this.flush();
        diskSegment = this.segments.find((s) => s.firstTxid === segment);
        if (!diskSegment) throw new Error(`no segment starts at txid ${segment}`);
        diskRecords = this.readSegment(diskSegment);
      }
      const buf = diskRecords.get(t);
      if (!buf) throw new Error(`segment ${diskSegment.file} lacks txid ${t}`);
      yield buf;
    }
  }

  /** Whether a replica at `txid` can be served from the log. */
  covers(txid: number): boolean {
    const first = this.first;
    const last = this.last?.txid;
    return first !== undefined && last !== undefined && txid >= first - 1 && txid <= last;
  }

  /** Drops everything: the database no longer follows this history. */
  reset(): void {
    this.closeFd();
    for (const s of this.segments) unlinkSync(s.file);
    this.segments = [];
    this.index.clear();
    this.memoryBytes = 0;
    this.memoryFrom = 0;
    this.pending = [];
    this.durableTxid = undefined;
  }

  /**
   * Applies the size and age limits; call it now and then. The log forgets the dropped
   * segments at once; their files are deleted on the thread pool (the promise settles then):
   * deleting a 16 MiB file takes milliseconds, and a busy master drops dozens at a time (a
   * trim with them on the event loop stalled it for 40–105 ms at 10,000 commits/s).
   */
  trim(now: number = Date.now()): Promise<void> {
    const dropped: string[] = [];
    while (this.segments.length > 1) {
      const oldest = this.segments[0]!;
      const tooBig = this.diskBytes > this.limits.maxBytes;
      const tooOld = now - oldest.newestTimeMs > this.limits.maxAgeMs;
      if (!tooBig && !tooOld) break;
      dropped.push(oldest.file);
      this.segments.shift();
      for (let t = this.index.first; t !== undefined && this.index.segment(t) === oldest.firstTxid; t = this.index.first) {
        this.memoryBytes -= this.index.dropBuf(t);
        this.index.shift();
      }
    }
    return Promise.all(dropped.map((file) => rm(file, { force: true }))).then(() => undefined);
  }

  flush(): void {
    if (this.pending.length === 0) return;
    const seg = this.segments[this.segments.length - 1]!;
    this.fd ??= openSync(seg.file, 'a');
    let chunks = this.pending;
    const bytes = chunks.reduce((n, c) => n + c.length, 0);
    this.pending = [];
    while (chunks.length > 0) {
      let written = writevSync(this.fd, chunks);
      // A short write: drop what went out and write the rest.
      while (chunks.length > 0 && written >= chunks[0]!.length) written -= chunks.shift()!.length;
      if (written > 0) chunks[0] = chunks[0]!.subarray(written);
    }
    // In the page cache now: a crash of this process no longer loses it.
    this.durableTxid = this.last?.txid;
    this.onFlushed?.();
    this.pacing.maybe(this.fd, bytes);
  }

  close(): void {
    this.flush();
    this.closeFd();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private trimMemory(): void {
    const last = this.index.last;
    if (last === undefined) return;
    this.memoryFrom = Math.max(this.memoryFrom, this.index.first!);
    // The newest record always stays: it is the one just appended.
    while (this.memoryBytes > this.limits.memoryBytes && this.memoryFrom < last) this.memoryBytes -= this.index.dropBuf(this.memoryFrom++);
  }

  private openSegment(firstTxid: number): Segment {
    this.flush();
    this.closeFd();
    const seg: Segment = {
      file: path.join(this.dir, `seg-${String(firstTxid).padStart(16, '0')}.log`),
      firstTxid,
      bytes: 0,
      newestTimeMs: Date.now(),
    };
    this.segments.push(seg);
    return seg;
  }

  private closeFd(): void {
    if (this.fd !== undefined) this.pacing.close(this.fd);
    this.fd = undefined;
  }

  private readSegment(seg: Segment): Map<number, Buffer> {
    const framer = new RecordFramer(MAX_RECORD_BYTES);
    const out = new Map<number, Buffer>();
    // Only the bytes load() accepted: a torn or zero-filled tail past them is not a record.
    for (const buf of framer.push(readFileSync(seg.file).subarray(0, seg.bytes))) out.set(decodeRecord(buf).txid, buf);
    return out;
  }

  /** Rebuilds the index from the segment files, dropping a torn record at the tail. */
  private load(): void {
    const files = readdirSync(this.dir)
      .filter((f) => SEGMENT.test(f))
      .sort();
    for (const name of files) {
      const file = path.join(this.dir, name);
      const seg: Segment = { file, firstTxid: Number(SEGMENT.exec(name)![1]), bytes: 0, newestTimeMs: statSync(file).mtimeMs };
      let records: Buffer[];
      try {
        records = new RecordFramer(MAX_RECORD_BYTES).push(readFileSync(file));
      } catch {
        records = [];
      }
      for (const buf of records) {
        let r;
        try {
          r = decodeRecord(buf);
        } catch {
          break;
        }
        const last = this.index.last;
        if (r.type !== RECORD_TX || (last !== undefined && r.txid !== last + 1)) break;
        this.cumulative += buf.length;
        this.index.push(r.txid, {
          epoch: r.epoch,
          checksum: r.checksum,
          commitTimeMs: r.commitTimeMs,
          bytes: buf.length,
          cumulative: this.cumulative,
          segment: seg.firstTxid,
          buf: undefined,
        });
        seg.bytes += buf.length;
      }
      if (seg.bytes === 0) {
        unlinkSync(file);
        continue;
      }
      this.segments.push(seg);
    }
    this.memoryFrom = (this.index.last ?? 0) + 1;
    this.durableTxid = this.last?.txid;
  }
}

/** The last transaction in a log directory, read without changing anything (for the CLI). */
export function lastLoggedPosition(dir: string): Position | undefined {
  const files = readdirSync(dir)
    .filter((f) => SEGMENT.test(f))
    .sort()
    .reverse();
  for (const name of files) {
    let last: Position | undefined;
    try {
      for (const buf of new RecordFramer(MAX_RECORD_BYTES).push(readFileSync(path.join(dir, name)))) {
        const r = decodeRecord(buf);
        if (r.type === RECORD_TX) last = { epoch: r.epoch, txid: r.txid, checksum: r.checksum };
      }
    } catch {
      // A torn tail: keep what decoded before it.
    }
    if (last) return last;
  }
  return undefined;
}
