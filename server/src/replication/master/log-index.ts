import { checksumHex, type Checksum } from '../wire/checksum.js';

export interface IndexEntry {
  epoch: number;
  checksum: Checksum;
  commitTimeMs: number;
  /** Bytes of the sealed record. */
  bytes: number;
  /** Bytes of all records up to and including this one since the log began: lag in bytes. */
  cumulative: number;
  /** The segment file holding the record, by its first txid. */
  segment: number;
  /** The record itself, while it is also kept in memory. */
  buf: Buffer | undefined;
}

const MIN_CAPACITY = 1024;

/**
 * The replication log's index: one entry per transaction, consecutive txids, oldest first,
 * kept in typed arrays. A master holds tens of thousands of them (the log's retention); as
 * objects, each with its checksum string and boxed numbers, they were most of the master's
 * JavaScript heap, and every major garbage collection marked them all again.
 */
export class LogIndex {
  private start = 0;
  private end = 0;
  private firstTxid = 0;
  private epochs = new Uint32Array(0);
  private checksumHi = new Uint32Array(0);
  private checksumLo = new Uint32Array(0);
  private times = new Float64Array(0);
  private sizes = new Float64Array(0);
  private cumulatives = new Float64Array(0);
  private segments = new Float64Array(0);
  private bufs: (Buffer | undefined)[] = [];

  get size(): number {
    return this.end - this.start;
  }

  /** The oldest txid held, if any. */
  get first(): number | undefined {
    return this.size > 0 ? this.firstTxid : undefined;
  }

  /** The newest txid held, if any. */
  get last(): number | undefined {
    return this.size > 0 ? this.firstTxid + this.size - 1 : undefined;
  }

  has(txid: number): boolean {
    return this.size > 0 && txid >= this.firstTxid && txid < this.firstTxid + this.size;
  }

  /** Appends the entry of `txid`, which must follow the newest (or start an empty index). */
  push(txid: number, e: IndexEntry): void {
    if (this.size > 0 && txid !== this.firstTxid + this.size) throw new Error(`log index expected txid ${this.firstTxid + this.size}, got ${txid}`);
    if (this.size === 0) {
      this.start = this.end = 0;
      this.firstTxid = txid;
    }
    if (this.end === this.epochs.length) this.makeRoom();
    const s = this.end++;
    this.epochs[s] = e.epoch;
    this.checksumHi[s] = parseInt(e.checksum.slice(0, 8), 16);
    this.checksumLo[s] = parseInt(e.checksum.slice(8, 16), 16);
    this.times[s] = e.commitTimeMs;
    this.sizes[s] = e.bytes;
    this.cumulatives[s] = e.cumulative;
    this.segments[s] = e.segment;
    this.bufs[s] = e.buf;
  }

  epoch(txid: number): number {
    return this.epochs[this.slot(txid)]!;
  }

  checksum(txid: number): Checksum {
    const s = this.slot(txid);
    return checksumHex(this.checksumHi[s]!, this.checksumLo[s]!);
  }

  commitTimeMs(txid: number): number {
    return this.times[this.slot(txid)]!;
  }

  bytes(txid: number): number {
    return this.sizes[this.slot(txid)]!;
  }

  cumulative(txid: number): number {
    return this.cumulatives[this.slot(txid)]!;
  }

  segment(txid: number): number {
    return this.segments[this.slot(txid)]!;
  }

  buf(txid: number): Buffer | undefined {
    return this.bufs[this.slot(txid)];
  }

  /** Forgets the in-memory copy of `txid`'s record; returns its size if there was one. */
  dropBuf(txid: number): number {
    const s = this.slot(txid);
    if (this.bufs[s] === undefined) return 0;
    this.bufs[s] = undefined;
    return this.sizes[s]!;
  }

  /** Drops the oldest entry. */
  shift(): void {
    if (this.size === 0) return;
    this.bufs[this.start] = undefined;
    this.start++;
    this.firstTxid++;
  }

  clear(): void {
    this.start = this.end = 0;
    this.bufs = [];
  }

  private slot(txid: number): number {
    if (!this.has(txid)) throw new Error(`log index holds no txid ${txid}`);
    return this.start + (txid - this.firstTxid);
  }

  /** Moves the entries to the front when half the arrays lie before them, else doubles them. */
  private makeRoom(): void {
    const n = this.size;
    const capacity = this.start >= this.epochs.length / 2 ? Math.max(MIN_CAPACITY, this.epochs.length) : Math.max(MIN_CAPACITY, 2 * this.epochs.length);
    const move = <T extends Uint32Array | Float64Array>(a: T, make: (n: number) => T): T => {
      if (capacity === a.length) {
        a.copyWithin(0, this.start, this.end);
        return a;
      }
      const b = make(capacity);
      b.set(a.subarray(this.start, this.end));
      return b;
    };
    this.epochs = move(this.epochs, (k) => new Uint32Array(k));
    this.checksumHi = move(this.checksumHi, (k) => new Uint32Array(k));
    this.checksumLo = move(this.checksumLo, (k) => new Uint32Array(k));
    this.times = move(this.times, (k) => new Float64Array(k));
    this.sizes = move(this.sizes, (k) => new Float64Array(k));
    this.cumulatives = move(this.cumulatives, (k) => new Float64Array(k));
    this.segments = move(this.segments, (k) => new Float64Array(k));
    this.bufs = this.bufs.slice(this.start, this.end);
    this.start = 0;
    this.end = n;
  }
}
