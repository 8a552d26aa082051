import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checksumHex } from '../../../server/src/replication/wire/checksum.js';
import { LogIndex, type IndexEntry } from '../../../server/src/replication/master/log-index.js';

/** A distinct entry per txid, so any slot mix-up shows. */
const entry = (txid: number, withBuf = false): IndexEntry => ({
  epoch: 1 + (txid % 3),
  checksum: checksumHex((txid * 2654435761) >>> 0, (0xffffffff - txid) >>> 0),
  commitTimeMs: 1.7e12 + txid + 0.25,
  bytes: 100 + txid,
  cumulative: txid * 1000,
  segment: Math.floor(txid / 1000) * 1000,
  buf: withBuf ? Buffer.from(`record ${txid}`) : undefined,
});

function assertHolds(ix: LogIndex, txid: number): void {
  const e = entry(txid, true);
  assert.ok(ix.has(txid), `holds ${txid}`);
  assert.equal(ix.epoch(txid), e.epoch);
  assert.equal(ix.checksum(txid), e.checksum);
  assert.equal(ix.commitTimeMs(txid), e.commitTimeMs);
  assert.equal(ix.bytes(txid), e.bytes);
  assert.equal(ix.cumulative(txid), e.cumulative);
  assert.equal(ix.segment(txid), e.segment);
}

describe('LogIndex', () => {
  it('gives back every field of every entry, through growth and while the oldest are dropped', () => {
    const ix = new LogIndex();
    assert.equal(ix.first, undefined);
    assert.equal(ix.last, undefined);
    let first = 5;
    // Pushes and shifts interleaved, so the arrays both grow and move their entries to the front.
    for (let txid = 5; txid < 20_000; txid++) {
      ix.push(txid, entry(txid, true));
      if (txid % 3 === 0) {
        ix.shift();
        first++;
      }
      if (txid % 997 === 0) {
        assert.equal(ix.first, first);
        assert.equal(ix.last, txid);
        for (const t of [first, Math.floor((first + txid) / 2), txid]) assertHolds(ix, t);
      }
    }
    assert.equal(ix.size, 20_000 - first);
    for (let t = first; t < 20_000; t += 13) assertHolds(ix, t);
    assert.equal(ix.buf(first)?.toString(), `record ${first}`);
    assert.ok(!ix.has(first - 1));
    assert.ok(!ix.has(20_000));
  });

  it('keeps a record buffer until dropped, and reports the bytes dropped once', () => {
    const ix = new LogIndex();
    ix.push(1, entry(1, true));
    ix.push(2, entry(2));
    assert.equal(ix.dropBuf(2), 0, 'nothing in memory');
    assert.equal(ix.dropBuf(1), entry(1).bytes);
    assert.equal(ix.buf(1), undefined);
    assert.equal(ix.dropBuf(1), 0, 'already dropped');
  });

  it('refuses a txid out of order and a txid it does not hold', () => {
    const ix = new LogIndex();
    ix.push(10, entry(10));
    assert.throws(() => ix.push(12, entry(12)), /expected txid 11/);
    assert.throws(() => ix.checksum(9), /no txid 9/);
    assert.throws(() => ix.epoch(11), /no txid 11/);
  });

  it('starts over at any txid once empty', () => {
    const ix = new LogIndex();
    ix.push(1, entry(1));
    ix.push(2, entry(2));
    ix.clear();
    assert.equal(ix.size, 0);
    ix.push(500, entry(500));
    assertHolds(ix, 500);
    ix.shift();
    assert.equal(ix.first, undefined);
    ix.push(42, entry(42));
    assertHolds(ix, 42);
  });
});
