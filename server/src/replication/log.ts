import { mkdirSync, openSync, readdirSync, readFileSync, statSync, unlinkSync, writevSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Checksum } from './checksum.js';
import { PacedSync } from './paced-sync.js';
import { decodeRecord, RecordFramer, type Position } from './record.js';

export interface LogLimits {
  /** Bytes of segment files kept on disk. */
  maxBytes: number;
  /** Age beyond which whole segments are dropped. */
  maxAgeMs: number;
  /** Bytes of recent records also kept in memory, so live replicas never touch the disk. */
  memoryBytes: number;
  segmentBytes: number;
}

interface Entry {
  txid: number;
  epoch: number;
  checksum: Checksum;
  commitTimeMs: number;
  bytes: number;
  /** Bytes of all entries up to and including this one since the log began: lag in bytes. */
  cumulative: number;
  segment: Segment;
  buf: Buffer | undefined;
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
  private entries: Entry[] = [];
  private head = 0;
  private segments: Segment[] = [];
  private fd: number | undefined;
  private readonly pacing = new PacedSync(SYNC_EVERY_MS, SYNC_MAX_BYTES);
  private pending: Buffer[] = [];
  private slab = Buffer.allocUnsafeSlow(0);
  private slabUsed = 0;
  private flushScheduled = false;
  private memoryBytes = 0;
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
    return this.entries[this.head]?.txid;
  }

  get last(): Position | undefined {
    const e = this.entries[this.entries.length - 1];
    return e && this.entries.length > this.head ? { epoch: e.epoch, txid: e.txid, checksum: e.checksum } : undefined;
  }

  get diskBytes(): number {
    return this.segments.reduce((n, s) => n + s.bytes, 0);
  }

  /** The checksum after `txid`, while the log holds it. */
  checksumAt(txid: number): Checksum | undefined {
    return this.entry(txid)?.checksum;
  }

  commitTimeOf(txid: number): number | undefined {
    return this.entry(txid)?.commitTimeMs;
  }

  /** Record bytes from just after `fromTxid` through `toTxid`: how far behind a replica is. */
  bytesBetween(fromTxid: number, toTxid: number): number {
    const to = this.entry(toTxid);
    if (!to) return 0;
    const from = this.entry(fromTxid);
    const first = this.entries[this.head];
    const base = from ? from.cumulative : first ? first.cumulative - first.bytes : to.cumulative;
    return Math.max(0, to.cumulative - base);
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
    const lastTxid = this.entries.length > this.head ? this.entries[this.entries.length - 1]!.txid : undefined;
    if (lastTxid !== undefined && pos.txid !== lastTxid + 1) throw new Error(`log expected txid ${lastTxid + 1}, got ${pos.txid}`);
    let seg = this.segments[this.segments.length - 1];
    if (!seg || seg.bytes >= this.limits.segmentBytes || this.needFreshSegment) {
      seg = this.openSegment(pos.txid);
      this.needFreshSegment = false;
    }
    this.cumulative += buf.length;
    this.entries.push({
      txid: pos.txid,
      epoch: pos.epoch,
      checksum: pos.checksum,
      commitTimeMs: pos.commitTimeMs,
      bytes: buf.length,
      cumulative: this.cumulative,
      segment: seg,
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
    let i = this.head + (txid + 1 - first);
    let diskSegment: Segment | undefined;
    let diskRecords = new Map<number, Buffer>();
    for (; i < this.entries.length; i++) {
      const e = this.entries[i]!;
      if (e.buf) {
        yield e.buf;
        continue;
      }
      if (diskSegment !== e.segment) {
        this.flush();
        diskSegment = e.segment;
        diskRecords = this.readSegment(e.segment);
      }
      const buf = diskRecords.get(e.txid);
      if (!buf) throw new Error(`segment ${e.segment.file} lacks txid ${e.txid}`);
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
    this.entries = [];
    this.head = 0;
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
      while (this.head < this.entries.length && this.entries[this.head]!.segment === oldest) {
        const e = this.entries[this.head]!;
        if (e.buf) this.memoryBytes -= e.bytes;
        e.buf = undefined;
        this.head++;
      }
    }
    if (this.head > 4096 && this.head > this.entries.length / 2) {
      this.entries = this.entries.slice(this.head);
      this.memoryFrom = Math.max(0, this.memoryFrom - this.head);
      this.head = 0;
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

  private entry(txid: number): Entry | undefined {
    const first = this.first;
    if (first === undefined || txid < first) return undefined;
    return this.entries[this.head + (txid - first)];
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
    while (this.memoryBytes > this.limits.memoryBytes && this.memoryFrom < this.entries.length - 1) {
      const e = this.entries[this.memoryFrom++]!;
      if (e.buf) {
        this.memoryBytes -= e.bytes;
        e.buf = undefined;
      }
    }
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
        const last = this.entries[this.entries.length - 1];
        if (r.type !== 1 || (last && r.txid !== last.txid + 1)) break;
        this.cumulative += buf.length;
        this.entries.push({
          txid: r.txid,
          epoch: r.epoch,
          checksum: r.checksum,
          commitTimeMs: r.commitTimeMs,
          bytes: buf.length,
          cumulative: this.cumulative,
          segment: seg,
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
    this.memoryFrom = this.entries.length;
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
        if (r.type === 1) last = { epoch: r.epoch, txid: r.txid, checksum: r.checksum };
      }
    } catch {
      // A torn tail: keep what decoded before it.
    }
    if (last) return last;
  }
  return undefined;
}
