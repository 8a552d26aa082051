import { crc32 } from 'node:zlib';
import { checksumHex, pageHash, type Checksum } from './checksum.js';
import { deltaBytes, writeDelta } from './page-delta.js';

/**
 * Wire and log format of the replication stream. Each record is
 *   u32 length of (type + body) | u8 type | body | u32 check
 * so a reader can frame records in a byte stream and refuse a damaged one.
 *
 * A transaction's pages are each `u32 pgno | u32 n` followed by the whole page when n is 0,
 * or else by its 64-bit page hash (two u32) and a delta of n bytes against the page as it was
 * before the transaction (page-delta.ts): the receiver holds that image, as its copy is the
 * database at the previous transaction.
 *
 * The check of a heartbeat or snapshot header is crc32 of (type + body). A transaction's is
 * crc32 of its digest: type and fixed fields, then per page its number, its delta length, its
 * 64-bit page hash (the one the database checksum uses) and the crc32 of its delta. Both
 * sides compute a whole page's hash anyway (the master in the same pass as the WAL checksum,
 * the replica to verify the transaction), so no whole page is read a third time for a crc.
 * Page 1's hash leaves out SQLite's commit stamps, so a whole page 1's entry is crc32 of the
 * whole page instead. A damaged page changes its 64-bit hash, hence the digest, and the crc
 * misses that with the same 2^-32 chance as a crc over the page; outside recovery the
 * replica's checksum verification (docs/HA.md) catches it as well. A delta's bytes are small,
 * and their own crc means a damaged one is refused as damaged before anything is applied.
 */
/**
 * The record format this build reads and writes. A replica names it when it opens a stream and
 * a master of another format refuses it, so a mixed-version pair fails with a reason, not with
 * records it cannot read: 1 checked transactions by a crc over their pages (before commit
 * `788cd7e`), 2 by the page-hash digest, 3 sends pages as deltas.
 */
export const RECORD_FORMAT = 3;
/** Format 2's transaction record type. */
const RECORD_TX_WHOLE_PAGES = 1;
export const RECORD_HEARTBEAT = 2;
export const RECORD_SNAPSHOT = 3;
export const RECORD_TX = 4;
const ENVELOPE = 4 + 4; // length prefix + trailing crc

export interface Position {
  epoch: number;
  txid: number;
  checksum: Checksum;
}

export interface PageImage {
  pgno: number;
  data: Buffer;
  /** pageHash(pgno, data), when already known. */
  hashA?: number;
  hashB?: number;
}

/** A page as a delta against its image before the transaction, with the hash of the result. */
export interface PageDelta {
  pgno: number;
  delta: Buffer;
  hashA: number;
  hashB: number;
}

export type PageEntry = PageImage | PageDelta;

export const isDelta = (p: PageEntry): p is PageDelta => 'delta' in p;

export interface TxRecord extends Position {
  type: typeof RECORD_TX;
  pageSize: number;
  /** Database size in pages after the transaction. */
  dbSize: number;
  /** Master's clock when it committed, in ms since the epoch (with sub-ms precision). */
  commitTimeMs: number;
  /** Page images or deltas, page 1 (if present) last. */
  pages: PageEntry[];
}

/** What the encoder takes: whole page images, plus (optionally) each page's runs to send as a delta. */
export type TxInput = Omit<TxRecord, 'type' | 'pages'> & { pages: PageImage[] };
/** Per page, its runs (see diffPage) or undefined to send it whole. */
export type PagePlan = (number[] | undefined)[];

export interface HeartbeatRecord extends Position {
  type: typeof RECORD_HEARTBEAT;
  masterTimeMs: number;
}

/** Heads a snapshot: the raw pages 1..pageCount follow it, pageSize bytes each. */
export interface SnapshotHeader extends Position {
  type: typeof RECORD_SNAPSHOT;
  pageSize: number;
  pageCount: number;
}

export type ReplicationRecord = TxRecord | HeartbeatRecord | SnapshotHeader;

const TX_FIXED = 4 + 8 + 4 + 4 + 4 + 8 + 8; // epoch, txid, pageSize, dbSize, nPages, checksum, time
const HEARTBEAT_FIXED = 4 + 8 + 8 + 8; // epoch, txid, checksum, time

function writeChecksum(buf: Buffer, at: number, c: Checksum): void {
  buf.writeUInt32BE(parseInt(c.slice(0, 8), 16), at);
  buf.writeUInt32BE(parseInt(c.slice(8, 16), 16), at + 4);
}

const readChecksum = (buf: Buffer, at: number): Checksum => checksumHex(buf.readUInt32BE(at), buf.readUInt32BE(at + 4));

function seal(buf: Buffer): Buffer {
  buf.writeUInt32BE(buf.length - ENVELOPE, 0);
  buf.writeUInt32BE(crc32(buf.subarray(4, buf.length - 4)), buf.length - 4);
  return buf;
}

/** Bytes of the sealed record of a transaction, its pages whole or as `plan` says. */
export function txRecordBytes(r: TxInput, plan?: PagePlan): number {
  let n = ENVELOPE + 1 + TX_FIXED;
  for (let i = 0; i < r.pages.length; i++) {
    const runs = plan?.[i];
    n += PAGE_HEADER + (runs ? 8 + deltaBytes(runs) : r.pageSize);
  }
  return n;
}

export function encodeTx(r: TxInput, plan?: PagePlan): Buffer {
  return encodeTxInto(r, Buffer.allocUnsafe(txRecordBytes(r, plan)), plan);
}

/** Seals the record into `buf`, which must be exactly txRecordBytes() long (a slice of a bigger buffer, say). */
export function encodeTxInto(r: TxInput, buf: Buffer, plan?: PagePlan): Buffer {
  const size = txRecordBytes(r, plan);
  if (buf.length !== size) throw new Error(`record buffer is ${buf.length} bytes, not ${size}`);
  let at = 4;
  buf[at++] = RECORD_TX;
  buf.writeUInt32BE(r.epoch, at);
  buf.writeDoubleBE(r.txid, at + 4);
  buf.writeUInt32BE(r.pageSize, at + 12);
  buf.writeUInt32BE(r.dbSize, at + 16);
  buf.writeUInt32BE(r.pages.length, at + 20);
  writeChecksum(buf, at + 24, r.checksum);
  buf.writeDoubleBE(r.commitTimeMs, at + 32);
  at += TX_FIXED;
  const digest = txDigest(buf, r.pages.length);
  for (let i = 0; i < r.pages.length; i++) {
    const p = r.pages[i]!;
    if (p.data.length !== r.pageSize) throw new Error(`page ${p.pgno} is ${p.data.length} bytes, not ${r.pageSize}`);
    let a = p.hashA;
    let b = p.hashB;
    if (a === undefined || b === undefined) [a, b] = pageHash(p.pgno, p.data);
    buf.writeUInt32BE(p.pgno, at);
    const runs = plan?.[i];
    if (runs) {
      buf.writeUInt32BE(a, at + 8);
      buf.writeUInt32BE(b, at + 12);
      const end = writeDelta(p.data, runs, buf, at + 16);
      const delta = buf.subarray(at + 16, end);
      buf.writeUInt32BE(delta.length, at + 4);
      setDigestEntry(digest, i, p.pgno, delta.length, a, b, crc32(delta));
      at = end;
    } else {
      buf.writeUInt32BE(0, at + 4);
      buf.set(p.data, at + PAGE_HEADER);
      setWholePageEntry(digest, i, p.pgno, p.data, a, b);
      at += PAGE_HEADER + r.pageSize;
    }
  }
  buf.writeUInt32BE(buf.length - ENVELOPE, 0);
  buf.writeUInt32BE(crc32(digest), buf.length - 4);
  return buf;
}

const PAGE_HEADER = 8; // pgno, delta length
const DIGEST_ENTRY = 20;
let digestScratch = Buffer.allocUnsafeSlow(1 + TX_FIXED + 64 * DIGEST_ENTRY);

/** A transaction's digest with its fixed part copied from the record; page entries follow. */
function txDigest(record: Buffer, pages: number): Buffer {
  const bytes = 1 + TX_FIXED + pages * DIGEST_ENTRY;
  if (digestScratch.length < bytes) digestScratch = Buffer.allocUnsafeSlow(Math.max(bytes, 2 * digestScratch.length));
  record.copy(digestScratch, 0, 4, 5 + TX_FIXED);
  return digestScratch.subarray(0, bytes);
}

function setDigestEntry(digest: Buffer, i: number, pgno: number, deltaLength: number, a: number, b: number, deltaCrc: number): void {
  const at = 1 + TX_FIXED + i * DIGEST_ENTRY;
  digest.writeUInt32BE(pgno, at);
  digest.writeUInt32BE(deltaLength, at + 4);
  digest.writeUInt32BE(a, at + 8);
  digest.writeUInt32BE(b, at + 12);
  digest.writeUInt32BE(deltaCrc, at + 16);
}

function setWholePageEntry(digest: Buffer, i: number, pgno: number, data: Buffer, a: number, b: number): void {
  if (pgno === 1) setDigestEntry(digest, i, pgno, 0, crc32(data), 0, 0);
  else setDigestEntry(digest, i, pgno, 0, a, b, 0);
}

export function encodeHeartbeat(r: Omit<HeartbeatRecord, 'type'>): Buffer {
  const buf = Buffer.allocUnsafe(ENVELOPE + 1 + HEARTBEAT_FIXED);
  buf[4] = RECORD_HEARTBEAT;
  buf.writeUInt32BE(r.epoch, 5);
  buf.writeDoubleBE(r.txid, 9);
  writeChecksum(buf, 17, r.checksum);
  buf.writeDoubleBE(r.masterTimeMs, 25);
  return seal(buf);
}

const SNAPSHOT_FIXED = 4 + 8 + 8 + 4 + 4; // epoch, txid, checksum, pageSize, pageCount

export function encodeSnapshotHeader(r: Omit<SnapshotHeader, 'type'>): Buffer {
  const buf = Buffer.allocUnsafe(ENVELOPE + 1 + SNAPSHOT_FIXED);
  buf[4] = RECORD_SNAPSHOT;
  buf.writeUInt32BE(r.epoch, 5);
  buf.writeDoubleBE(r.txid, 9);
  writeChecksum(buf, 17, r.checksum);
  buf.writeUInt32BE(r.pageSize, 25);
  buf.writeUInt32BE(r.pageCount, 29);
  return seal(buf);
}

export class CorruptRecordError extends Error {}

/** Decodes one sealed record (length prefix included). Page data are views into `buf`. */
export function decodeRecord(buf: Buffer): ReplicationRecord {
  if (buf.length < ENVELOPE + 1 || buf.readUInt32BE(0) !== buf.length - ENVELOPE) throw new CorruptRecordError('bad record length');
  const body = buf.subarray(4, buf.length - 4);
  const type = body[0];
  if (type === RECORD_TX) return decodeTx(buf, body);
  if (type === RECORD_TX_WHOLE_PAGES) throw new CorruptRecordError('transaction record of an older format: master and replicas must run the same version');
  if (crc32(body) !== buf.readUInt32BE(buf.length - 4)) throw new CorruptRecordError('record crc mismatch');
  if (type === RECORD_HEARTBEAT && body.length === 1 + HEARTBEAT_FIXED) {
    return {
      type,
      epoch: body.readUInt32BE(1),
      txid: body.readDoubleBE(5),
      checksum: readChecksum(body, 13),
      masterTimeMs: body.readDoubleBE(21),
    };
  }
  if (type === RECORD_SNAPSHOT && body.length === 1 + SNAPSHOT_FIXED) {
    return {
      type,
      epoch: body.readUInt32BE(1),
      txid: body.readDoubleBE(5),
      checksum: readChecksum(body, 13),
      pageSize: body.readUInt32BE(21),
      pageCount: body.readUInt32BE(25),
    };
  }
  throw new CorruptRecordError(`unknown record type ${type}`);
}

/** A transaction record: pages and deltas are views into `buf`, each with its page hash. */
function decodeTx(buf: Buffer, body: Buffer): TxRecord {
  if (body.length < 1 + TX_FIXED) throw new CorruptRecordError('transaction record too short');
  const pageSize = body.readUInt32BE(13);
  const n = body.readUInt32BE(21);
  // Every page takes at least its header: a count the body cannot hold is damage, not a reason to allocate.
  if (n > (body.length - 1 - TX_FIXED) / PAGE_HEADER) throw new CorruptRecordError('record size does not match its page count');
  const digest = txDigest(buf, n);
  const pages: PageEntry[] = [];
  let at = 1 + TX_FIXED;
  for (let i = 0; i < n; i++) {
    if (at + PAGE_HEADER > body.length) throw new CorruptRecordError('record size does not match its page count');
    const pgno = body.readUInt32BE(at);
    const deltaLength = body.readUInt32BE(at + 4);
    if (deltaLength === 0) {
      const end = at + PAGE_HEADER + pageSize;
      if (end > body.length) throw new CorruptRecordError('record size does not match its page count');
      const data = body.subarray(at + PAGE_HEADER, end);
      const [hashA, hashB] = pageHash(pgno, data);
      setWholePageEntry(digest, i, pgno, data, hashA, hashB);
      pages.push({ pgno, data, hashA, hashB });
      at = end;
    } else {
      const end = at + PAGE_HEADER + 8 + deltaLength;
      if (end > body.length) throw new CorruptRecordError('record size does not match its page count');
      const hashA = body.readUInt32BE(at + 8);
      const hashB = body.readUInt32BE(at + 12);
      const delta = body.subarray(at + 16, end);
      setDigestEntry(digest, i, pgno, deltaLength, hashA, hashB, crc32(delta));
      pages.push({ pgno, delta, hashA, hashB });
      at = end;
    }
  }
  if (at !== body.length) throw new CorruptRecordError('record size does not match its page count');
  if (crc32(digest) !== buf.readUInt32BE(buf.length - 4)) throw new CorruptRecordError('record crc mismatch');
  return {
    type: RECORD_TX,
    epoch: body.readUInt32BE(1),
    txid: body.readDoubleBE(5),
    pageSize,
    dbSize: body.readUInt32BE(17),
    checksum: readChecksum(body, 25),
    commitTimeMs: body.readDoubleBE(33),
    pages,
  };
}

/**
 * Splits a byte stream into sealed records. Feed it chunks as they arrive; it returns every
 * record completed so far and keeps the remainder. A record that lies within one chunk is a
 * view of it; only a record that spans chunks is copied, once, when its last byte arrives
 * (joining whole chunks instead copied every byte received, and at 10,000 commits/s that
 * second 60 MB/s of buffers set off a full garbage collection several times a second).
 */
export class RecordFramer {
  /** The start of a record that continues in the next chunk: views of the chunks it came in. */
  private pieces: Buffer[] = [];
  private have = 0;
  /** Bytes that record needs, once its length prefix has arrived (0 before). */
  private needed = 0;

  constructor(private readonly maxRecordBytes: number) {}

  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    if (this.have > 0 && this.needed === 0) {
      // The length prefix itself was cut: rare, so joining the chunk on is fine.
      chunk = Buffer.concat([...this.pieces, chunk]);
      this.pieces = [];
      this.have = 0;
    } else if (this.have > 0) {
      const take = Math.min(this.needed - this.have, chunk.length);
      this.pieces.push(chunk.subarray(0, take));
      this.have += take;
      at = take;
      if (this.have < this.needed) return out;
      out.push(Buffer.concat(this.pieces, this.needed));
      this.pieces = [];
      this.have = 0;
      this.needed = 0;
    }
    while (at < chunk.length) {
      const left = chunk.length - at;
      const needed = left >= 4 ? chunk.readUInt32BE(at) + ENVELOPE : 0;
      if (needed > this.maxRecordBytes) throw new CorruptRecordError(`record of ${needed} bytes exceeds the limit`);
      if (needed > 0 && left >= needed) {
        out.push(chunk.subarray(at, at + needed));
        at += needed;
        continue;
      }
      this.pieces = [chunk.subarray(at)];
      this.have = left;
      this.needed = needed;
      break;
    }
    return out;
  }
}
