import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  CorruptRecordError,
  decodeRecord,
  encodeHeartbeat,
  encodeTx,
  RECORD_HEARTBEAT,
  RECORD_TX,
  isDelta,
  RecordFramer,
  type TxInput,
} from '../../../server/src/replication/wire/record.js';
import { pageHash } from '../../../server/src/replication/wire/checksum.js';
import { applyDelta, PageImages } from '../../../server/src/replication/wire/page-delta.js';
import { randomBytes, rng } from './fixtures.js';

const next = rng(11);

function tx(overrides: Partial<TxInput> = {}): TxInput {
  const pageSize = overrides.pageSize ?? 64;
  return {
    epoch: 3,
    txid: 17,
    checksum: '0123456789abcdef',
    pageSize,
    dbSize: 9,
    commitTimeMs: 1_700_000_000_123.456,
    pages: [
      { pgno: 7, data: randomBytes(pageSize, next) },
      { pgno: 2, data: randomBytes(pageSize, next) },
      { pgno: 1, data: randomBytes(pageSize, next) },
    ],
    ...overrides,
  };
}

function assertTxEqual(decoded: ReturnType<typeof decodeRecord>, r: TxInput): void {
  assert.equal(decoded.type, RECORD_TX);
  if (decoded.type !== RECORD_TX) return;
  assert.equal(decoded.epoch, r.epoch);
  assert.equal(decoded.txid, r.txid);
  assert.equal(decoded.checksum, r.checksum);
  assert.equal(decoded.pageSize, r.pageSize);
  assert.equal(decoded.dbSize, r.dbSize);
  assert.equal(decoded.commitTimeMs, r.commitTimeMs);
  assert.deepEqual(
    decoded.pages.map((p) => p.pgno),
    r.pages.map((p) => p.pgno),
  );
  decoded.pages.forEach((p, i) => assert.ok(!isDelta(p) && p.data.equals(r.pages[i]!.data), `page ${p.pgno}`));
}

/** A transaction of real-sized pages and the same pages after a few small edits, with the deltas a master would send. */
function editedTx(): { before: TxInput; after: TxInput; plan: (number[] | undefined)[] } {
  const before = tx({ pageSize: 4096, pages: [{ pgno: 7, data: randomBytes(4096, next) }, { pgno: 3, data: randomBytes(4096, next) }, { pgno: 1, data: randomBytes(4096, next) }] });
  const pages = before.pages.map((p) => ({ pgno: p.pgno, data: Buffer.from(p.data) }));
  pages[0]!.data.write('a new cell', 3000);
  pages[0]!.data[0]! ^= 0xff;
  pages[2]!.data[28]! ^= 0x01;
  const after = { ...before, txid: before.txid + 1, pages };
  const images = new PageImages(4096, 16);
  images.plan(before.pages, before.dbSize);
  return { before, after, plan: images.plan(after.pages, after.dbSize) };
}

describe('replication records', () => {
  it('a tx record round-trips: page order, dbSize, checksum, txid beyond 2^32', () => {
    for (const r of [
      tx(),
      tx({ txid: 2 ** 32 + 5, epoch: 0xffffffff, checksum: 'ffffffff00000001' }),
      tx({ txid: Number.MAX_SAFE_INTEGER, checksum: '0000000000000000', dbSize: 0xfffffffe }),
      tx({ pages: [], dbSize: 1 }),
      tx({ pageSize: 4096, pages: [{ pgno: 123456, data: randomBytes(4096, next) }] }),
    ]) {
      const buf = encodeTx(r);
      assert.equal(buf.readUInt32BE(0), buf.length - 8, 'length prefix counts type + body');
      assertTxEqual(decodeRecord(buf), r);
    }
  });

  it('a heartbeat round-trips', () => {
    const h = { epoch: 9, txid: 2 ** 40 + 1, checksum: 'deadbeef00c0ffee', masterTimeMs: 1_700_000_123_456.75 };
    const d = decodeRecord(encodeHeartbeat(h));
    assert.deepEqual(d, { type: RECORD_HEARTBEAT, ...h });
  });

  it('refuses a page whose size differs from the record page size', () => {
    assert.throws(() => encodeTx(tx({ pages: [{ pgno: 1, data: Buffer.alloc(63) }] })), /page 1 is 63 bytes/);
  });

  it('detects any single flipped byte, anywhere in a record', () => {
    for (const buf of [encodeTx(tx({ pageSize: 16 })), encodeHeartbeat({ epoch: 1, txid: 2, checksum: '00000000ffffffff', masterTimeMs: 3 })]) {
      for (let i = 0; i < buf.length; i++) {
        for (const bit of [0x01, 0x80]) {
          const bad = Buffer.from(buf);
          bad[i]! ^= bit;
          assert.throws(() => decodeRecord(bad), CorruptRecordError, `byte ${i} bit ${bit}`);
        }
      }
      assert.doesNotThrow(() => decodeRecord(buf));
    }
  });

  it('detects any flipped bit in a real-sized record, page 1 commit stamps included', () => {
    const r = tx({ pageSize: 4096, pages: [{ pgno: 5, data: randomBytes(4096, next) }, { pgno: 1, data: randomBytes(4096, next) }] });
    const buf = encodeTx(r);
    const page1 = buf.length - 4 - 4096;
    // Page 1's stamp bytes are outside the database checksum, so only the record check sees them.
    for (const at of [page1 + 24, page1 + 27, page1 + 92, page1 + 99]) assert.ok(at < buf.length - 4);
    for (let i = 0; i < buf.length; i++) {
      const bad = Buffer.from(buf);
      bad[i]! ^= 1 << (i & 7);
      assert.throws(() => decodeRecord(bad), CorruptRecordError, `byte ${i}`);
    }
  });

  it('page hashes given to the encoder change nothing; decoded pages carry them', () => {
    const r = tx({ pageSize: 4096, pages: [{ pgno: 9, data: randomBytes(4096, next) }, { pgno: 1, data: randomBytes(4096, next) }] });
    const hashed = {
      ...r,
      pages: r.pages.map((p) => {
        const [hashA, hashB] = pageHash(p.pgno, p.data);
        return { ...p, hashA, hashB };
      }),
    };
    const buf = encodeTx(r);
    assert.ok(encodeTx(hashed).equals(buf));
    const d = decodeRecord(buf);
    assert.equal(d.type, RECORD_TX);
    if (d.type !== RECORD_TX) return;
    assert.deepEqual(
      d.pages.map((p) => [p.pgno, p.hashA, p.hashB]),
      hashed.pages.map((p) => [p.pgno, p.hashA, p.hashB]),
    );
    // A wrong hash handed to the encoder makes a record the decoder refuses.
    const wrong = { ...hashed, pages: hashed.pages.map((p, i) => (i === 0 ? { ...p, hashA: (p.hashA ^ 1) >>> 0 } : p)) };
    assert.throws(() => decodeRecord(encodeTx(wrong)), CorruptRecordError);
  });

  it('pages sent as deltas carry their page hash and rebuild the page on the previous image', () => {
    const { before, after, plan } = editedTx();
    assert.ok(plan[0] && plan[2], 'the edited pages go as deltas');
    assert.equal(plan[1]!.length, 0, 'an unchanged page is a delta of no runs');
    const buf = encodeTx(after, plan);
    assert.ok(buf.length < 500, `${buf.length} bytes for three 4 KiB pages`);
    const d = decodeRecord(buf);
    assert.equal(d.type, RECORD_TX);
    if (d.type !== RECORD_TX) return;
    d.pages.forEach((p, i) => {
      assert.ok(isDelta(p), `page ${p.pgno} is a delta`);
      const rebuilt = applyDelta(before.pages[i]!.data, p.delta, Buffer.alloc(4096));
      assert.ok(rebuilt.equals(after.pages[i]!.data), `page ${p.pgno} rebuilt`);
      assert.deepEqual([p.hashA, p.hashB], pageHash(p.pgno, rebuilt));
    });
    // Whole pages and deltas mix in one record.
    const mixed = decodeRecord(encodeTx(after, [undefined, plan[1], plan[2]]));
    assert.ok(mixed.type === RECORD_TX && !isDelta(mixed.pages[0]!) && isDelta(mixed.pages[2]!));
  });

  it('detects any flipped bit in a record with deltas', () => {
    const { after, plan } = editedTx();
    const buf = encodeTx(after, plan);
    assert.doesNotThrow(() => decodeRecord(buf));
    for (let i = 0; i < buf.length; i++) {
      for (const bit of [0x01, 0x80]) {
        const bad = Buffer.from(buf);
        bad[i]! ^= bit;
        assert.throws(() => decodeRecord(bad), CorruptRecordError, `byte ${i} bit ${bit}`);
      }
    }
  });

  it('refuses a transaction record of the format before deltas, saying why', () => {
    const buf = encodeTx(tx());
    buf[4] = 1;
    assert.throws(() => decodeRecord(buf), /older format: master and replicas must run the same version/);
  });

  it('refuses truncated and extended records', () => {
    const buf = encodeTx(tx());
    for (const n of [0, 4, 8, 9, buf.length - 1]) assert.throws(() => decodeRecord(buf.subarray(0, n)), CorruptRecordError, `first ${n} bytes`);
    assert.throws(() => decodeRecord(Buffer.concat([buf, Buffer.alloc(1)])), CorruptRecordError);
  });
});

describe('RecordFramer', () => {
  const records = [
    encodeTx(tx()),
    encodeHeartbeat({ epoch: 1, txid: 2, checksum: '0000000000000001', masterTimeMs: 5 }),
    encodeTx(tx({ pages: [], txid: 18 })),
    encodeTx(tx({ pageSize: 1024, txid: 19, pages: [{ pgno: 3, data: randomBytes(1024, next) }] })),
    encodeHeartbeat({ epoch: 1, txid: 3, checksum: '0000000000000002', masterTimeMs: 6 }),
  ];
  const stream = Buffer.concat(records);

  function frameIn(chunks: Buffer[], max = 1 << 20): Buffer[] {
    const framer = new RecordFramer(max);
    const out: Buffer[] = [];
    for (const c of chunks) out.push(...framer.push(c));
    return out;
  }

  function assertSame(out: Buffer[]): void {
    assert.equal(out.length, records.length);
    out.forEach((r, i) => assert.ok(r.equals(records[i]!), `record ${i}`));
    for (const r of out) decodeRecord(r); // and each one still verifies
  }

  it('splits one big concatenation into the original records', () => {
    assertSame(frameIn([stream]));
  });

  it('splits 1-byte chunks into the original records', () => {
    const chunks: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) chunks.push(stream.subarray(i, i + 1));
    assertSame(frameIn(chunks));
  });

  it('splits random chunk sizes into the original records', () => {
    const r = rng(12);
    for (let round = 0; round < 50; round++) {
      const chunks: Buffer[] = [];
      for (let at = 0; at < stream.length; ) {
        const n = 1 + Math.floor(r() * (round % 2 ? 10 : 700));
        chunks.push(Buffer.from(stream.subarray(at, at + n))); // copies, as a socket would hand out
        at += n;
      }
      assertSame(frameIn(chunks));
    }
  });

  it('keeps an incomplete record until the rest arrives, and empty chunks are harmless', () => {
    const framer = new RecordFramer(1 << 20);
    const first = records[0]!;
    assert.deepEqual(framer.push(first.subarray(0, 3)), []);
    assert.deepEqual(framer.push(Buffer.alloc(0)), []);
    assert.deepEqual(framer.push(first.subarray(3, first.length - 1)), []);
    const out = framer.push(Buffer.concat([first.subarray(first.length - 1), records[1]!.subarray(0, 5)]));
    assert.equal(out.length, 1);
    assert.ok(out[0]!.equals(first));
    const rest = framer.push(records[1]!.subarray(5));
    assert.equal(rest.length, 1);
    assert.ok(rest[0]!.equals(records[1]!));
  });

  it('hands out records that lie within one chunk as views of it, and copies only those that span chunks', () => {
    const framer = new RecordFramer(1 << 20);
    const cut = records[0]!.length + records[1]!.length + 10; // inside the third record
    // Each chunk in memory of its own, as a socket hands them out (Buffer.from would share a pool).
    const own = (b: Buffer): Buffer => {
      const c = Buffer.allocUnsafeSlow(b.length);
      b.copy(c);
      return c;
    };
    const first = own(stream.subarray(0, cut));
    const second = own(stream.subarray(cut));
    const out = [...framer.push(first), ...framer.push(second)];
    assertSame(out);
    assert.equal(out[0]!.buffer, first.buffer);
    assert.equal(out[1]!.buffer, first.buffer);
    assert.notEqual(out[2]!.buffer, first.buffer, 'the spanning record is a copy of its own');
    assert.notEqual(out[2]!.buffer, second.buffer);
    assert.equal(out[3]!.buffer, second.buffer);
    assert.equal(out[4]!.buffer, second.buffer);
  });

  it('throws on a record larger than maxRecordBytes', () => {
    const big = encodeTx(tx({ pageSize: 4096, pages: [{ pgno: 1, data: Buffer.alloc(4096) }] }));
    assert.throws(() => frameIn([big], big.length - 1), CorruptRecordError);
    assert.equal(frameIn([big], big.length).length, 1, 'a record of exactly the limit passes');
    // Only the length prefix is needed to refuse it.
    assert.throws(() => new RecordFramer(100).push(big.subarray(0, 4)), CorruptRecordError);
  });

  it('frames a 5 MiB record delivered in 64 KiB chunks', () => {
    const pageSize = 4096;
    const pages = Array.from({ length: 1280 }, (_, i) => ({ pgno: i + 2, data: Buffer.alloc(pageSize, i % 251) }));
    const big = encodeTx(tx({ pageSize, pages, txid: 2 ** 33 }));
    assert.ok(big.length > 5 * 1024 * 1024);
    const tail = records[1]!;
    const all = Buffer.concat([big, tail]);
    const framer = new RecordFramer(8 * 1024 * 1024);
    const out: Buffer[] = [];
    for (let at = 0; at < all.length; at += 65536) out.push(...framer.push(all.subarray(at, at + 65536)));
    assert.equal(out.length, 2);
    assert.ok(out[0]!.equals(big));
    assert.ok(out[1]!.equals(tail));
    const d = decodeRecord(out[0]!);
    assert.equal(d.type, RECORD_TX);
    assert.equal(d.txid, 2 ** 33);
    if (d.type === RECORD_TX) assert.equal(d.pages.length, 1280);
  });
});
