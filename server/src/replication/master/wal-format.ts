/**
 * SQLite's write-ahead log format (https://www.sqlite.org/fileformat2.html#walformat):
 * a 32-byte header, then frames of a 24-byte header plus one page. Every value is big-endian;
 * the checksums run over 32-bit words whose byte order the header's magic number selects.
 * Pure functions, no I/O.
 */
import { finishPageHashA, finishPageHashB, pageHash, pageHashSeed0, pageHashSeed1 } from '../wire/checksum.js';

export const WAL_HEADER_BYTES = 32;
export const FRAME_HEADER_BYTES = 24;
const MAGIC_LE = 0x377f0682;
const MAGIC_BE = 0x377f0683;
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export interface WalHeader {
  pageSize: number;
  checkpointSeq: number;
  salt1: number;
  salt2: number;
  /** Checksum words are big-endian (magic ends in 3) or little-endian. */
  bigEndian: boolean;
  /** Running checksum after the header: the seed of the first frame's checksum. */
  cksum0: number;
  cksum1: number;
}

export interface Frame {
  pgno: number;
  /** Database size in pages after the commit, on a commit frame; 0 otherwise. */
  commitSize: number;
  /** The page image: a view into the buffer that was parsed, not a copy. */
  data: Buffer;
  /** pageHash(pgno, data), the database checksum's page hash (docs/HA.md). */
  hashA: number;
  hashB: number;
}

/**
 * SQLite's WAL checksum: for each pair of words (x0, x1), s0 += x0 + s1; s1 += x1 + s0, all
 * modulo 2^32. `buf` must hold a multiple of 8 bytes.
 */
export function walChecksum(buf: Buffer, bigEndian: boolean, s0: number, s1: number): [number, number] {
  const n = buf.length;
  // Fast path: native little-endian words read straight from an aligned view (x86 and ARM
  // write their WALs little-endian).
  if (!bigEndian && LITTLE_ENDIAN_HOST && (buf.byteOffset & 3) === 0) {
    // Signed words and `| 0` keep every sum a 32-bit integer for the JIT (no doubles);
    // the bits are the same as unsigned arithmetic modulo 2^32.
    const w = new Int32Array(buf.buffer, buf.byteOffset, n >>> 2);
    let a = s0 | 0;
    let b = s1 | 0;
    let i = 0;
    for (const end = w.length - 3; i < end; i += 4) {
      a = (a + w[i]! + b) | 0;
      b = (b + w[i + 1]! + a) | 0;
      a = (a + w[i + 2]! + b) | 0;
      b = (b + w[i + 3]! + a) | 0;
    }
    for (; i < w.length; i += 2) {
      a = (a + w[i]! + b) | 0;
      b = (b + w[i + 1]! + a) | 0;
    }
    return [a >>> 0, b >>> 0];
  }
  for (let i = 0; i < n; i += 8) {
    const x0 = bigEndian ? buf.readUInt32BE(i) : buf.readUInt32LE(i);
    const x1 = bigEndian ? buf.readUInt32BE(i + 4) : buf.readUInt32LE(i + 4);
    s0 = (s0 + x0 + s1) >>> 0;
    s1 = (s1 + x1 + s0) >>> 0;
  }
  return [s0, s1];
}

/** Parses and verifies a WAL header; undefined when it is absent, torn or not a WAL. */
export function parseWalHeader(buf: Buffer): WalHeader | undefined {
  if (buf.length < WAL_HEADER_BYTES) return undefined;
  const magic = buf.readUInt32BE(0);
  if (magic !== MAGIC_LE && magic !== MAGIC_BE) return undefined;
  const bigEndian = magic === MAGIC_BE;
  const pageSize = buf.readUInt32BE(8);
  const [c0, c1] = walChecksum(buf.subarray(0, 24), bigEndian, 0, 0);
  if (c0 !== buf.readUInt32BE(24) || c1 !== buf.readUInt32BE(28)) return undefined;
  return {
    pageSize: pageSize === 1 ? 65536 : pageSize,
    checkpointSeq: buf.readUInt32BE(12),
    salt1: buf.readUInt32BE(16),
    salt2: buf.readUInt32BE(20),
    bigEndian,
    cksum0: c0,
    cksum1: c1,
  };
}

export interface ScanState {
  /** Offset of the next frame to read, relative to the start of the WAL file. */
  offset: number;
  cksum0: number;
  cksum1: number;
}

export interface CommittedTx {
  frames: Frame[];
  dbSize: number;
  /** WAL offset just past the commit frame. */
  endOffset: number;
}

export interface ScanResult {
  transactions: CommittedTx[];
  /** State just past the last commit frame; frames after it are not yet committed. */
  state: ScanState;
  /** A frame failed to verify: the log ends there, whatever follows in the file. */
  hitEnd: boolean;
}

/**
 * Walks the frames in `buf` (which starts at WAL offset `from.offset`), verifying salts and
 * the checksum chain, and groups them into committed transactions. It stops at the first frame
 * that does not verify: that is where SQLite's own log ends (the rest is a torn write, or a
 * previous generation of the file).
 */
export function scanFrames(buf: Buffer, header: WalHeader, from: ScanState): ScanResult {
  const frameBytes = FRAME_HEADER_BYTES + header.pageSize;
  const transactions: CommittedTx[] = [];
  let state = from;
  const chain: Chain = { s0: from.cksum0, s1: from.cksum1, hashA: 0, hashB: 0 };
  // The WAL checksum and the page hash read the same words: on a little-endian WAL (what x86
  // and ARM write) both run in one pass over an aligned view of the whole buffer.
  const fused = !header.bigEndian && LITTLE_ENDIAN_HOST && (buf.byteOffset & 3) === 0;
  const words = fused ? new Int32Array(buf.buffer, buf.byteOffset, buf.length >>> 2) : undefined;
  let pending: Frame[] = [];
  let hitEnd = false;
  for (let at = 0; at + frameBytes <= buf.length; at += frameBytes) {
    hitEnd = true;
    if (buf.readUInt32BE(at + 8) !== header.salt1 || buf.readUInt32BE(at + 12) !== header.salt2) break;
    const pgno = buf.readUInt32BE(at);
    const data = buf.subarray(at + FRAME_HEADER_BYTES, at + frameBytes);
    if (words) fusedFramePass(words, at >>> 2, header.pageSize >>> 2, pgno, chain);
    else separatePasses(buf, at, data, header.bigEndian, pgno, chain);
    if (chain.s0 !== buf.readUInt32BE(at + 16) || chain.s1 !== buf.readUInt32BE(at + 20)) break;
    hitEnd = false;
    // Page 1's hash leaves out SQLite's commit stamps, which the fused pass cannot skip.
    let { hashA, hashB } = chain;
    if (pgno === 1) [hashA, hashB] = pageHash(1, data);
    const frame: Frame = { pgno, commitSize: buf.readUInt32BE(at + 4), data, hashA, hashB };
    pending.push(frame);
    if (frame.commitSize > 0) {
      const endOffset = from.offset + at + frameBytes;
      transactions.push({ frames: pending, dbSize: frame.commitSize, endOffset });
      pending = [];
      state = { offset: endOffset, cksum0: chain.s0, cksum1: chain.s1 };
    }
  }
  return { transactions, state, hitEnd };
}

/** The WAL checksum chain through a frame, and that frame's page hash. */
interface Chain {
  s0: number;
  s1: number;
  hashA: number;
  hashB: number;
}

/**
 * One pass over a frame at word `first` of `w`: its first 8 header bytes and its page go into
 * the WAL checksum chain, and the page into the page hash (the same lanes as pageHash).
 */
function fusedFramePass(w: Int32Array, first: number, pageWords: number, pgno: number, chain: Chain): void {
  let a = (chain.s0 + w[first]! + chain.s1) | 0;
  let b = (chain.s1 + w[first + 1]! + a) | 0;
  let h0 = pageHashSeed0(pgno);
  let h1 = pageHashSeed1(pgno);
  const end = first + FRAME_HEADER_BYTES / 4 + pageWords;
  for (let i = first + FRAME_HEADER_BYTES / 4; i < end; i += 2) {
    const x = w[i]!;
    const y = w[i + 1]!;
    a = (a + x + b) | 0;
    b = (b + y + a) | 0;
    h0 = Math.imul(h0 ^ x, 0x01000193);
    h1 = Math.imul(((h1 ^ y) + (h0 >>> 7)) | 0, 0x5bd1e995);
  }
  chain.s0 = a >>> 0;
  chain.s1 = b >>> 0;
  chain.hashA = finishPageHashA(h0, h1);
  chain.hashB = finishPageHashB(pgno, h1, chain.hashA);
}

function separatePasses(buf: Buffer, at: number, data: Buffer, bigEndian: boolean, pgno: number, chain: Chain): void {
  let [s0, s1] = walChecksum(buf.subarray(at, at + 8), bigEndian, chain.s0, chain.s1);
  [s0, s1] = walChecksum(data, bigEndian, s0, s1);
  chain.s0 = s0;
  chain.s1 = s1;
  [chain.hashA, chain.hashB] = pageHash(pgno, data);
}
