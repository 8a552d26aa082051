import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { Db } from '../../../server/src/db/connection.js';
import {
  FRAME_HEADER_BYTES,
  parseWalHeader,
  scanFrames,
  WAL_HEADER_BYTES,
  walChecksum,
  type CommittedTx,
  type ScanState,
  type WalHeader,
} from '../../../server/src/replication/master/wal-format.js';
import { pageHash } from '../../../server/src/replication/wire/checksum.js';
import { openMaster, pageCount, pageSize, randomBytes, readPages, rng, tempDir, type TempDir } from './fixtures.js';

/** A reference WAL checksum written from the format description, independent of the module. */
function refChecksum(buf: Buffer, bigEndian: boolean, s0: number, s1: number): [number, number] {
  for (let i = 0; i < buf.length; i += 8) {
    const x0 = bigEndian ? buf.readUInt32BE(i) : buf.readUInt32LE(i);
    const x1 = bigEndian ? buf.readUInt32BE(i + 4) : buf.readUInt32LE(i + 4);
    s0 = Number((BigInt(s0) + BigInt(x0) + BigInt(s1)) % 4294967296n);
    s1 = Number((BigInt(s1) + BigInt(x1) + BigInt(s0)) % 4294967296n);
  }
  return [s0, s1];
}

/** The same bytes at a given byteOffset inside a larger ArrayBuffer. */
function atOffset(buf: Buffer, offset: number): Buffer {
  const big = Buffer.alloc(buf.length + offset + 8);
  buf.copy(big, offset);
  const view = big.subarray(offset, offset + buf.length);
  assert.equal(view.byteOffset % 8, (big.byteOffset + offset) % 8);
  return view;
}

const start = (h: WalHeader): ScanState => ({ offset: WAL_HEADER_BYTES, cksum0: h.cksum0, cksum1: h.cksum1 });

describe('wal-format on a real WAL', () => {
  let tmp: TempDir;
  let db: Db;
  let wal: Buffer;
  let header: WalHeader;
  /** page_count after each commit of the workload, in commit order. */
  const sizes: number[] = [];
  let bigTx = -1;

  before(() => {
    tmp = tempDir('walfmt');
    db = openMaster(tmp.file('m.db'));
    db.exec('CREATE TABLE seed (id INTEGER PRIMARY KEY, v TEXT)');
    // Start from an empty WAL so that every frame in it belongs to the commits below.
    db.pragma('wal_checkpoint(TRUNCATE)');
    const next = rng(7);
    const commit = (sql: string, ...args: unknown[]): void => {
      db.prepare(sql).run(...args);
      sizes.push(pageCount(db));
    };
    commit('CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)');
    commit('INSERT INTO t (body) VALUES (?)', randomBytes(100, next));
    bigTx = sizes.length;
    commit('INSERT INTO t (body) VALUES (?)', randomBytes(300_000, next)); // ~75 pages in one tx
    commit('INSERT INTO seed (v) VALUES (?)', 'x');
    commit('DELETE FROM t WHERE id = 2');
    commit('CREATE INDEX seed_v ON seed (v)');
    wal = readFileSync(tmp.file('m.db-wal'));
    header = parseWalHeader(wal)!;
  });
  after(() => {
    db.close();
    tmp.remove();
  });

  it('parseWalHeader gives the page size and the salts every frame carries', () => {
    assert.ok(header, 'a valid header');
    assert.equal(header.pageSize, pageSize(db));
    const frameBytes = FRAME_HEADER_BYTES + header.pageSize;
    assert.equal((wal.length - WAL_HEADER_BYTES) % frameBytes, 0, 'whole frames only');
    for (let at = WAL_HEADER_BYTES; at < wal.length; at += frameBytes) {
      assert.equal(wal.readUInt32BE(at + 8), header.salt1);
      assert.equal(wal.readUInt32BE(at + 12), header.salt2);
    }
    // The header checksum is the one SQLite stored.
    assert.deepEqual([header.cksum0, header.cksum1], [wal.readUInt32BE(24), wal.readUInt32BE(28)]);
    assert.equal(header.bigEndian, wal.readUInt32BE(0) === 0x377f0683);
  });

  it('parseWalHeader refuses short, damaged and non-WAL buffers, and decodes page size 1 as 65536', () => {
    assert.equal(parseWalHeader(wal.subarray(0, 31)), undefined);
    for (const i of [0, 3, 8, 12, 16, 20, 27, 31]) {
      const bad = Buffer.from(wal.subarray(0, 32));
      bad[i]! ^= 0x10;
      assert.equal(parseWalHeader(bad), undefined, `flipped header byte ${i}`);
    }
    // A header that says page size 1 (SQLite's encoding of 65536), resealed with its checksum.
    const big = Buffer.from(wal.subarray(0, 32));
    big.writeUInt32BE(1, 8);
    const [c0, c1] = refChecksum(big.subarray(0, 24), header.bigEndian, 0, 0);
    big.writeUInt32BE(c0, 24);
    big.writeUInt32BE(c1, 28);
    assert.equal(parseWalHeader(big)?.pageSize, 65536);
  });

  it('scanFrames finds one transaction per commit, with dbSize = page_count after it', () => {
    const { transactions, state } = scanFrames(wal.subarray(WAL_HEADER_BYTES), header, start(header));
    assert.equal(transactions.length, sizes.length);
    assert.deepEqual(
      transactions.map((t) => t.dbSize),
      sizes,
    );
    assert.ok(transactions[bigTx]!.frames.length >= 70, `big tx has ${transactions[bigTx]!.frames.length} frames`);
    assert.equal(state.offset, wal.length, 'every frame is committed');
    assert.equal(transactions[transactions.length - 1]!.endOffset, wal.length);
    for (const tx of transactions) {
      // Only the last frame of a transaction is a commit frame.
      tx.frames.forEach((f, i) => assert.equal(f.commitSize > 0, i === tx.frames.length - 1));
      for (const f of tx.frames) assert.equal(f.data.length, header.pageSize);
    }
  });

  it('the newest frame of each page equals the page the database now holds', () => {
    const { transactions } = scanFrames(wal.subarray(WAL_HEADER_BYTES), header, start(header));
    const latest = new Map<number, Buffer>();
    for (const tx of transactions) for (const f of tx.frames) latest.set(f.pgno, f.data);
    const current = new Map(readPages(db).map((p) => [p.pgno, p.data]));
    assert.ok(latest.size > 0);
    for (const [pgno, data] of latest) {
      if (pgno > pageCount(db)) continue;
      assert.ok(data.equals(current.get(pgno)!), `page ${pgno}`);
    }
  });

  it('frame checksums computed with walChecksum equal the ones SQLite stored', () => {
    const frameBytes = FRAME_HEADER_BYTES + header.pageSize;
    let s: [number, number] = [header.cksum0, header.cksum1];
    for (let at = WAL_HEADER_BYTES; at < wal.length; at += frameBytes) {
      s = walChecksum(wal.subarray(at, at + 8), header.bigEndian, s[0], s[1]);
      s = walChecksum(wal.subarray(at + FRAME_HEADER_BYTES, at + frameBytes), header.bigEndian, s[0], s[1]);
      assert.deepEqual(s, [wal.readUInt32BE(at + 16), wal.readUInt32BE(at + 20)]);
    }
  });

  it('scanning resumes from a returned state and yields the remaining transactions', () => {
    const all = scanFrames(wal.subarray(WAL_HEADER_BYTES), header, start(header)).transactions;
    const cut = all[1]!;
    const firstPart = scanFrames(wal.subarray(WAL_HEADER_BYTES, cut.endOffset + 100), header, start(header));
    assert.equal(firstPart.transactions.length, 2, 'a partial frame after the cut is not read');
    assert.equal(firstPart.state.offset, cut.endOffset);
    const rest = scanFrames(wal.subarray(firstPart.state.offset), header, firstPart.state);
    assert.deepEqual(
      rest.transactions.map((t) => [t.dbSize, t.endOffset, t.frames.length]),
      all.slice(2).map((t) => [t.dbSize, t.endOffset, t.frames.length]),
    );
  });

  it('a flipped byte in a frame stops the scan at that frame', () => {
    const all = scanFrames(wal.subarray(WAL_HEADER_BYTES), header, start(header)).transactions;
    const frameBytes = FRAME_HEADER_BYTES + header.pageSize;
    const txStart = (k: number): number => (k === 0 ? WAL_HEADER_BYTES : all[k - 1]!.endOffset);
    const cases: { tx: number; frameInTx: number; byte: number; what: string }[] = [
      { tx: 0, frameInTx: 0, byte: FRAME_HEADER_BYTES + 100, what: 'page data of the first frame' },
      { tx: 2, frameInTx: 0, byte: 3, what: 'page number' },
      { tx: 2, frameInTx: 30, byte: FRAME_HEADER_BYTES + header.pageSize - 1, what: 'last byte of a middle frame of the big tx' },
      { tx: 4, frameInTx: 0, byte: 17, what: 'stored checksum' },
      { tx: all.length - 1, frameInTx: all[all.length - 1]!.frames.length - 1, byte: 7, what: 'commit size of the last commit frame' },
    ];
    for (const c of cases) {
      const bad = Buffer.from(wal);
      bad[txStart(c.tx) + c.frameInTx * frameBytes + c.byte]! ^= 0x01;
      const { transactions, state } = scanFrames(bad.subarray(WAL_HEADER_BYTES), header, start(header));
      assert.equal(transactions.length, c.tx, c.what);
      assert.equal(state.offset, txStart(c.tx), c.what);
      transactions.forEach((t: CommittedTx, i) => assert.equal(t.endOffset, all[i]!.endOffset));
    }
  });

  it('each frame carries its page hash, the same from the fused pass (aligned) and the separate ones (unaligned)', () => {
    const fused = scanFrames(wal.subarray(WAL_HEADER_BYTES), header, start(header));
    const unaligned = atOffset(wal, 1).subarray(WAL_HEADER_BYTES);
    assert.equal(unaligned.byteOffset % 4, (wal.byteOffset + 1 + WAL_HEADER_BYTES) % 4);
    assert.notEqual(unaligned.byteOffset % 4, 0);
    const separate = scanFrames(unaligned, header, start(header));
    assert.deepEqual(separate.state, fused.state);
    const frames = fused.transactions.flatMap((t) => t.frames);
    const other = separate.transactions.flatMap((t) => t.frames);
    assert.equal(other.length, frames.length);
    assert.ok(frames.some((f) => f.pgno === 1), 'the workload writes page 1 too');
    frames.forEach((f, i) => {
      assert.deepEqual([f.hashA, f.hashB], pageHash(f.pgno, f.data), `frame ${i} (page ${f.pgno})`);
      assert.deepEqual([other[i]!.hashA, other[i]!.hashB], [f.hashA, f.hashB], `frame ${i} unaligned`);
    });
  });

  it('wrong salts stop the scan', () => {
    for (const h of [
      { ...header, salt1: (header.salt1 + 1) >>> 0 },
      { ...header, salt2: (header.salt2 ^ 0x80000000) >>> 0 },
    ]) {
      const { transactions, state } = scanFrames(wal.subarray(WAL_HEADER_BYTES), h, start(header));
      assert.equal(transactions.length, 0);
      assert.deepEqual(state, start(header));
    }
    // A frame of an older generation (salts differ) in the middle ends the log there.
    const all = scanFrames(wal.subarray(WAL_HEADER_BYTES), header, start(header)).transactions;
    const bad = Buffer.from(wal);
    bad.writeUInt32BE((header.salt1 - 1) >>> 0, all[2]!.endOffset + 8);
    assert.equal(scanFrames(bad.subarray(WAL_HEADER_BYTES), header, start(header)).transactions.length, 3);
  });

  it('a wrong starting checksum stops the scan at the first frame', () => {
    const { transactions } = scanFrames(wal.subarray(WAL_HEADER_BYTES), header, { ...start(header), cksum0: header.cksum0 ^ 1 });
    assert.equal(transactions.length, 0);
  });
});

describe('walChecksum', () => {
  const next = rng(99);
  const data = randomBytes(4096 + 8, next);

  it('gives the same result on aligned and unaligned buffers (fast path vs slow path)', () => {
    for (const len of [8, 24, 4096, 4104]) {
      const src = data.subarray(0, len);
      const expected = refChecksum(src, false, 0x1234, 0xfedcba98);
      for (const offset of [0, 1, 2, 3, 4, 5, 8]) {
        const view = atOffset(src, offset);
        assert.deepEqual(walChecksum(view, false, 0x1234, 0xfedcba98), expected, `len ${len} offset ${offset}`);
      }
      assert.deepEqual(walChecksum(atOffset(src, 1), true, 7, 9), refChecksum(src, true, 7, 9));
    }
  });

  it('big-endian mode gives a different value, equal to little-endian over byte-swapped words', () => {
    const src = data.subarray(0, 4096);
    const le = walChecksum(src, false, 0, 0);
    const be = walChecksum(src, true, 0, 0);
    assert.notDeepEqual(le, be);
    const swapped = Buffer.from(src).swap32();
    assert.deepEqual(walChecksum(swapped, false, 0, 0), be);
  });

  it('changes when any one word changes', () => {
    const src = Buffer.from(data.subarray(0, 256));
    const base = walChecksum(src, false, 0, 0);
    for (let i = 0; i < src.length; i += 4) {
      const bad = Buffer.from(src);
      bad[i]! ^= 0x40;
      assert.notDeepEqual(walChecksum(bad, false, 0, 0), base, `word at ${i}`);
    }
  });
});
