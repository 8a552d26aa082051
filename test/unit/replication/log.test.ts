import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { checksumHex } from '../../../server/src/replication/wire/checksum.js';
import { ReplicationLog, type LogLimits } from '../../../server/src/replication/master/replication-log.js';
import { decodeRecord, encodeTx } from '../../../server/src/replication/wire/record.js';
import { randomBytes, rng, tempDir, type TempDir } from './fixtures.js';

const PAGE = 64;
const next = rng(31);
/** Commit times near the real clock: segment ages are measured from them. */
const BASE_TIME = Date.now();

interface Made {
  pos: { epoch: number; txid: number; checksum: string; commitTimeMs: number };
  buf: Buffer;
}

/** A sealed tx record with small fake pages; its size depends on `pages`. */
function make(txid: number, pages = 2, epoch = 1): Made {
  const pos = { epoch, txid, checksum: checksumHex(txid * 7919, (txid ^ 0x5a5a5a5a) >>> 0), commitTimeMs: BASE_TIME + txid };
  const buf = encodeTx({
    ...pos,
    pageSize: PAGE,
    dbSize: 10 + txid,
    pages: Array.from({ length: pages }, (_, i) => ({ pgno: 2 + i, data: randomBytes(PAGE, next) })),
  });
  return { pos, buf };
}

const RECORD = make(0).buf.length; // every make(n) with 2 pages has this size

function limits(over: Partial<LogLimits> = {}): LogLimits {
  return { maxBytes: 1 << 30, maxAgeMs: 1e12, memoryBytes: 1 << 30, segmentBytes: 1 << 30, ...over };
}

describe('ReplicationLog', () => {
  let tmp: TempDir;
  const open: ReplicationLog[] = [];
  const newLog = (l: LogLimits): ReplicationLog => {
    const log = new ReplicationLog(tmp.path, l);
    open.push(log);
    return log;
  };
  const segments = (): string[] => readdirSync(tmp.path).filter((f) => f.startsWith('seg-')).sort();
  const appendAll = (log: ReplicationLog, from: number, to: number, pages = 2): Made[] => {
    const out: Made[] = [];
    for (let t = from; t <= to; t++) {
      const m = make(t, pages);
      log.append(m.pos, m.buf);
      out.push(m);
    }
    return out;
  };
  const txidsOf = (bufs: Iterable<Buffer>): number[] => [...bufs].map((b) => decodeRecord(b).txid);

  beforeEach(() => {
    tmp = tempDir('replog');
  });
  afterEach(() => {
    for (const l of open.splice(0)) l.close();
    tmp.remove();
  });

  it('is empty at first', () => {
    const log = newLog(limits());
    assert.equal(log.first, undefined);
    assert.equal(log.last, undefined);
    assert.equal(log.covers(0), false);
    assert.deepEqual([...log.recordsAfter(0)], []);
  });

  it('appends records and reads them back from memory, from any txid', () => {
    const log = newLog(limits());
    const made = appendAll(log, 1, 10);
    assert.equal(log.first, 1);
    assert.deepEqual(log.last, { epoch: 1, txid: 10, checksum: made[9]!.pos.checksum });
    for (const after of [0, 1, 5, 9, 10]) {
      const got = [...log.recordsAfter(after)];
      assert.equal(got.length, 10 - after, `after ${after}`);
      got.forEach((b, i) => assert.ok(b.equals(made[after + i]!.buf), `after ${after}: record ${after + i + 1}`));
    }
    assert.equal(log.checksumAt(4), made[3]!.pos.checksum);
    assert.equal(log.commitTimeOf(4), made[3]!.pos.commitTimeMs);
    assert.ok(log.covers(0) && log.covers(10) && !log.covers(11));
  });

  it('with a tiny memory budget, older records come back from disk identical', () => {
    const log = newLog(limits({ memoryBytes: RECORD * 2 }));
    const made = appendAll(log, 1, 12);
    const got = [...log.recordsAfter(0)];
    assert.equal(got.length, 12);
    got.forEach((b, i) => assert.ok(b.equals(made[i]!.buf), `record ${i + 1}`));
    assert.deepEqual(txidsOf(log.recordsAfter(6)), [7, 8, 9, 10, 11, 12]);
  });

  it('rotates segments at segmentBytes', () => {
    const log = newLog(limits({ segmentBytes: RECORD * 3 }));
    appendAll(log, 1, 10);
    log.flush();
    assert.deepEqual(segments(), ['seg-0000000000000001.log', 'seg-0000000000000004.log', 'seg-0000000000000007.log', 'seg-0000000000000010.log']);
    for (const [name, n] of [
      ['seg-0000000000000001.log', 3],
      ['seg-0000000000000010.log', 1],
    ] as const) {
      assert.equal(statSync(`${tmp.path}/${name}`).size, RECORD * n);
    }
    assert.equal(log.diskBytes, RECORD * 10);
  });

  it('trim() by maxBytes drops old segments; covers() turns false for them, true for recent ones', async () => {
    const log = newLog(limits({ segmentBytes: RECORD * 3, maxBytes: RECORD * 5, memoryBytes: RECORD }));
    const made = appendAll(log, 1, 12);
    log.flush();
    await log.trim();
    // 4 segments of 3 records; at most 5 records' bytes may stay: only the newest segment does.
    assert.ok(log.diskBytes <= RECORD * 5, `${log.diskBytes} bytes kept`);
    assert.deepEqual(segments(), ['seg-0000000000000010.log']);
    assert.equal(log.first, 10);
    assert.equal(log.covers(3), false);
    assert.equal(log.covers(8), false);
    assert.equal(log.covers(9), true, 'a replica at 9 needs 10.., which is kept');
    assert.equal(log.covers(12), true);
    assert.deepEqual([...log.recordsAfter(3)], [], 'nothing is served from a trimmed position');
    const got = [...log.recordsAfter(9)];
    assert.equal(got.length, 3);
    got.forEach((b, i) => assert.ok(b.equals(made[9 + i]!.buf)));
    // Appends continue after a trim.
    appendAll(log, 13, 13);
    assert.deepEqual(txidsOf(log.recordsAfter(9)), [10, 11, 12, 13]);
  });

  it('after trim(), the log answers nothing about txids it no longer holds', async () => {
    const log = newLog(limits({ segmentBytes: RECORD * 3, maxBytes: RECORD * 3 }));
    appendAll(log, 1, 9);
    log.flush();
    await log.trim();
    assert.equal(log.first, 7);
    assert.equal(log.checksumAt(3), undefined, 'checksumAt(3) after txid 3 was trimmed');
    assert.equal(log.commitTimeOf(3), undefined, 'commitTimeOf(3) after txid 3 was trimmed');
  });

  it('trim() by age drops all but the newest segment', async () => {
    const log = newLog(limits({ segmentBytes: RECORD * 3, maxAgeMs: 60_000 }));
    appendAll(log, 1, 9);
    log.flush();
    await log.trim(BASE_TIME); // nothing is old yet
    assert.equal(segments().length, 3);
    await log.trim(BASE_TIME + 3_600_000);
    assert.deepEqual(segments(), ['seg-0000000000000007.log']);
    assert.equal(log.first, 7);
    assert.deepEqual(log.last?.txid, 9);
  });

  it('a reopened log restores last, and serves every record from disk', () => {
    const first = newLog(limits({ segmentBytes: RECORD * 4 }));
    const made = appendAll(first, 1, 10);
    first.close();
    open.splice(open.indexOf(first), 1);
    const log = newLog(limits({ segmentBytes: RECORD * 4 }));
    assert.deepEqual(log.last, { epoch: 1, txid: 10, checksum: made[9]!.pos.checksum });
    assert.equal(log.first, 1);
    assert.equal(log.checksumAt(5), made[4]!.pos.checksum);
    assert.equal(log.commitTimeOf(5), made[4]!.pos.commitTimeMs);
    const got = [...log.recordsAfter(0)];
    assert.equal(got.length, 10);
    got.forEach((b, i) => assert.ok(b.equals(made[i]!.buf), `record ${i + 1}`));
    assert.equal(log.bytesBetween(0, 10), RECORD * 10);
    appendAll(log, 11, 12);
    assert.deepEqual(txidsOf(log.recordsAfter(8)), [9, 10, 11, 12]);
  });

  it('ignores a torn tail on load, and appends continue with consecutive txids', () => {
    const first = newLog(limits());
    const made = appendAll(first, 1, 6);
    first.close();
    open.splice(open.indexOf(first), 1);
    const [seg] = segments();
    truncateSync(`${tmp.path}/${seg}`, RECORD * 6 - 5); // record 6 is torn

    const log = newLog(limits());
    assert.equal(log.last?.txid, 5);
    assert.equal(log.last?.checksum, made[4]!.pos.checksum);
    assert.throws(() => log.append(make(7).pos, make(7).buf), /expected txid 6/);
    const again = appendAll(log, 6, 8);
    const got = [...log.recordsAfter(0)];
    assert.deepEqual(txidsOf(got), [1, 2, 3, 4, 5, 6, 7, 8]);
    got.slice(0, 5).forEach((b, i) => assert.ok(b.equals(made[i]!.buf)));
    got.slice(5).forEach((b, i) => assert.ok(b.equals(again[i]!.buf), 'the new record 6, not the torn one'));
    log.close();
    open.splice(open.indexOf(log), 1);

    // And the repaired log survives another restart.
    const third = newLog(limits());
    assert.equal(third.last?.txid, 8);
    assert.deepEqual(txidsOf(third.recordsAfter(0)), [1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('a tail cut inside a length prefix is ignored on load', () => {
    const first = newLog(limits());
    appendAll(first, 1, 4);
    first.close();
    open.splice(open.indexOf(first), 1);
    const [seg] = segments();
    truncateSync(`${tmp.path}/${seg}`, RECORD * 2 + 2);
    const log = newLog(limits());
    assert.equal(log.last?.txid, 2);
    assert.deepEqual(txidsOf(log.recordsAfter(0)), [1, 2]);
  });

  it('a corrupt record ends the log there; a new history continues past it across restarts', () => {
    const first = newLog(limits());
    appendAll(first, 1, 4);
    first.close();
    open.splice(open.indexOf(first), 1);
    const [seg] = segments();
    const file = `${tmp.path}/${seg}`;
    const bytes = readFileSync(file);
    bytes[RECORD * 2 + 40]! ^= 0xff; // inside record 3
    writeFileSync(file, bytes);
    const log = newLog(limits());
    assert.equal(log.last?.txid, 2);
    const again = appendAll(log, 3, 3);
    log.close();
    open.splice(open.indexOf(log), 1);
    const reopened = newLog(limits());
    assert.equal(reopened.last?.txid, 3);
    const got = [...reopened.recordsAfter(0)];
    assert.deepEqual(txidsOf(got), [1, 2, 3]);
    assert.ok(got[2]!.equals(again[0]!.buf));
  });

  it('a zero-filled tail (a file extended but not written before a crash) is ignored, and the rest still served', () => {
    const first = newLog(limits());
    const made = appendAll(first, 1, 3);
    first.close();
    open.splice(open.indexOf(first), 1);
    const [seg] = segments();
    const file = `${tmp.path}/${seg}`;
    writeFileSync(file, Buffer.concat([readFileSync(file), Buffer.alloc(100)]));
    const log = newLog(limits());
    assert.equal(log.last?.txid, 3);
    const got = [...log.recordsAfter(0)];
    assert.deepEqual(txidsOf(got), [1, 2, 3]);
    got.forEach((b, i) => assert.ok(b.equals(made[i]!.buf)));
  });

  it('refuses an append with a non-consecutive txid', () => {
    const log = newLog(limits());
    appendAll(log, 5, 6); // an empty log starts anywhere
    assert.equal(log.first, 5);
    assert.throws(() => log.append(make(8).pos, make(8).buf), /expected txid 7, got 8/);
    assert.throws(() => log.append(make(6).pos, make(6).buf), /expected txid 7, got 6/);
    assert.equal(log.last?.txid, 6);
    appendAll(log, 7, 7);
    assert.equal(log.last?.txid, 7);
  });

  it('bytesBetween sums the record bytes after one txid through another', () => {
    const log = newLog(limits({ segmentBytes: RECORD * 2, memoryBytes: RECORD }));
    const made: Made[] = [];
    for (let t = 1; t <= 10; t++) {
      const m = make(t, 1 + (t % 4)); // records of different sizes
      log.append(m.pos, m.buf);
      made.push(m);
    }
    const sum = (from: number, to: number): number => made.slice(from, to).reduce((n, m) => n + m.buf.length, 0);
    for (const [a, b] of [
      [0, 10],
      [1, 10],
      [3, 7],
      [5, 5],
      [9, 10],
    ] as const) {
      assert.equal(log.bytesBetween(a, b), sum(a, b), `bytesBetween(${a}, ${b})`);
    }
    assert.equal(log.bytesBetween(4, 11), 0, 'a txid past the end is not in the log');
    assert.equal(log.diskBytes, sum(0, 10));
  });

  it('reset() empties the log and its directory', () => {
    const log = newLog(limits({ segmentBytes: RECORD * 2 }));
    appendAll(log, 1, 5);
    log.flush();
    assert.ok(segments().length > 0);
    log.reset();
    assert.equal(log.first, undefined);
    assert.equal(log.last, undefined);
    assert.equal(log.covers(3), false);
    assert.deepEqual([...log.recordsAfter(0)], []);
    assert.deepEqual(segments(), []);
    assert.equal(log.diskBytes, 0);
    // A new history may start at any txid.
    const made = appendAll(log, 100, 101);
    const got = [...log.recordsAfter(99)];
    assert.equal(got.length, 2);
    got.forEach((b, i) => assert.ok(b.equals(made[i]!.buf)));
    log.close();
    open.splice(open.indexOf(log), 1);
    const reopened = newLog(limits());
    assert.equal(reopened.first, 100);
    assert.equal(reopened.last?.txid, 101);
  });

  it('keeps answering correctly after trimming thousands of entries (index compaction)', async () => {
    const tiny = make(0, 0).buf.length;
    const log = newLog(limits({ segmentBytes: tiny * 100, maxBytes: tiny * 250, memoryBytes: tiny * 50 }));
    const made = appendAll(log, 1, 10_000, 0);
    await log.trim();
    assert.equal(log.first, 9801, 'three segments of 100 are kept');
    assert.equal(log.last?.txid, 10_000);
    assert.equal(log.covers(9799), false);
    assert.equal(log.covers(9800), true);
    assert.equal(log.checksumAt(9900), made[9899]!.pos.checksum);
    assert.equal(log.bytesBetween(9800, 10_000), tiny * 200);
    const got = [...log.recordsAfter(9850)];
    assert.equal(got.length, 150);
    got.forEach((b, i) => assert.ok(b.equals(made[9850 + i]!.buf), `record ${9851 + i}`));
    appendAll(log, 10_001, 10_300, 0);
    await log.trim();
    assert.equal(log.last?.txid, 10_300);
    assert.deepEqual(txidsOf(log.recordsAfter(10_290)), Array.from({ length: 10 }, (_, i) => 10_291 + i));
  });

  it('records encoded into reserved slab space are served, flushed and reloaded intact', () => {
    const log = newLog(limits({ memoryBytes: RECORD * 2 }));
    const made: Made[] = [];
    for (let t = 1; t <= 50; t++) {
      const m = make(t, 1 + (t % 3));
      const room = log.reserve(m.buf.length);
      m.buf.copy(room);
      log.append(m.pos, room);
      made.push(m);
    }
    // A record too big for a slab gets a buffer of its own, between slab records.
    const huge = make(51, (2 * 1024 * 1024) / PAGE);
    const hugeRoom = log.reserve(huge.buf.length);
    huge.buf.copy(hugeRoom);
    log.append(huge.pos, hugeRoom);
    made.push(huge);
    const last = make(52, 2);
    const lastRoom = log.reserve(last.buf.length);
    last.buf.copy(lastRoom);
    log.append(last.pos, lastRoom);
    made.push(last);
    const check = (bufs: Buffer[], where: string): void => {
      assert.equal(bufs.length, 52);
      bufs.forEach((b, i) => assert.ok(b.equals(made[i]!.buf), `record ${i + 1} (${where})`));
    };
    check([...log.recordsAfter(0)], 'memory or disk');
    log.close();
    open.splice(open.indexOf(log), 1);
    check([...newLog(limits()).recordsAfter(0)], 'reloaded from the segment file');
  });

  it('records stay readable while appends happen between reads (flush before serving from disk)', () => {
    const log = newLog(limits({ memoryBytes: RECORD, segmentBytes: RECORD * 3 }));
    const made = appendAll(log, 1, 4);
    const it1 = log.recordsAfter(0);
    const firstTwo = [it1.next().value, it1.next().value] as Buffer[];
    made.push(...appendAll(log, 5, 5));
    const got = [...firstTwo, ...it1];
    assert.deepEqual(txidsOf(got), [1, 2, 3, 4, 5]);
    got.forEach((b, i) => assert.ok(b.equals(made[i]!.buf), `record ${i + 1}`));
  });
});
