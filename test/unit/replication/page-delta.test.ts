import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { applyDelta, deltaBytes, DeltaError, diffPage, PageImages, writeDelta } from '../../../server/src/replication/wire/page-delta.js';
import { randomBytes, rng } from './fixtures.js';

const next = rng(29);

/** The delta of `runs` over `page`, encoded as a record carries it. */
function encoded(page: Buffer, runs: number[]): Buffer {
  const out = Buffer.alloc(deltaBytes(runs));
  assert.equal(writeDelta(page, runs, out, 0), out.length);
  return out;
}

function roundTrip(prev: Buffer, page: Buffer, maxBytes = 4096): number[] {
  const runs = diffPage(prev, page, maxBytes);
  assert.ok(runs, 'a delta within the limit');
  assert.ok(applyDelta(prev, encoded(page, runs), Buffer.alloc(prev.length)).equals(page), 'the delta rebuilds the page');
  return runs;
}

describe('page deltas', () => {
  it('rebuild the page from the previous image, for edits anywhere (first and last byte included)', () => {
    for (let round = 0; round < 200; round++) {
      const prev = randomBytes(4096, next);
      const page = Buffer.from(prev);
      const edits = 1 + Math.floor(next() * 6);
      for (let e = 0; e < edits; e++) {
        const at = round % 3 === 0 && e === 0 ? (round % 2 ? 0 : 4095) : Math.floor(next() * 4096);
        page[at] = (page[at]! + 1 + Math.floor(next() * 254)) & 0xff;
      }
      const runs = roundTrip(prev, page);
      for (let i = 0; i < runs.length; i += 2) assert.equal(runs[i]! % 4, 0, 'runs start on words');
    }
  });

  it('work on pages at any alignment in their buffers', () => {
    const prev = Buffer.concat([Buffer.alloc(3), randomBytes(1024, next)]).subarray(3);
    const page = Buffer.concat([Buffer.alloc(1), prev]).subarray(1);
    page.write('changed', 500);
    assert.notEqual(page.byteOffset % 4, 0);
    assert.deepEqual(roundTrip(prev, page), [500, 8]);
  });

  it('merge differences a word or two apart into one run, keep distant ones apart', () => {
    const prev = Buffer.alloc(4096);
    const page = Buffer.from(prev);
    page[100] = 1;
    page[108] = 1; // one equal word between: merged
    page[2000] = 1; // far: its own run
    assert.deepEqual(roundTrip(prev, page), [100, 12, 2000, 4]);
    assert.deepEqual(roundTrip(prev, prev), [], 'an unchanged page has no runs');
  });

  it('give up (undefined) when the delta would be bigger than allowed', () => {
    const prev = randomBytes(4096, next);
    assert.equal(diffPage(prev, randomBytes(4096, next), 1024), undefined);
    const page = Buffer.from(prev);
    page.fill(0, 0, 1016);
    assert.ok(diffPage(prev, page, 1024), '1016 bytes and a run header fit in 1024');
    page.fill(0, 0, 1024);
    assert.equal(diffPage(prev, page, 1024), undefined);
  });

  it('refuse runs outside the page or the delta, and trailing bytes', () => {
    const base = Buffer.alloc(64);
    const out = Buffer.alloc(64);
    const delta = (...words: number[]): Buffer => {
      const b = Buffer.alloc(words.length * 2);
      words.forEach((w, i) => b.writeUInt16BE(w, i * 2));
      return b;
    };
    assert.throws(() => applyDelta(base, delta(1, 62, 4, 0, 0), out), DeltaError, 'past the page end');
    assert.throws(() => applyDelta(base, delta(1, 0, 8, 0), out), DeltaError, 'past the delta end');
    assert.throws(() => applyDelta(base, delta(2, 0, 2, 0), out), DeltaError, 'a run header cut short');
    assert.throws(() => applyDelta(base, delta(0, 0), out), DeltaError, 'bytes after the last run');
    assert.throws(() => applyDelta(base, Buffer.alloc(1), out), DeltaError);
    assert.throws(() => applyDelta(base, delta(0), Buffer.alloc(32)), DeltaError, 'a page of another size');
    assert.ok(applyDelta(base, delta(1, 60, 4, 0xffff, 0xffff), out).subarray(60).equals(Buffer.from([0xff, 0xff, 0xff, 0xff])));
  });
});

describe('PageImages (the master’s previous images)', () => {
  const page = (pgno: number, fill: number): { pgno: number; data: Buffer } => ({ pgno, data: Buffer.alloc(4096, fill) });

  it('sends a page whole the first time, then as a delta against what it sent last', () => {
    const images = new PageImages(4096, 8);
    assert.deepEqual(images.plan([page(2, 1), page(3, 1)], 3), [undefined, undefined]);
    const changed = page(2, 1);
    changed.data[77] = 9;
    const [runs, again] = images.plan([changed, page(3, 1)], 3);
    assert.deepEqual(runs, [76, 4]);
    assert.deepEqual(again, []);
    const back = page(2, 1);
    assert.deepEqual(images.plan([back], 3), [[76, 4]], 'diffed against the image it sent last, not the first one');
  });

  it('keeps the pages used most recently, up to its size', () => {
    const images = new PageImages(4096, 2);
    images.plan([page(2, 1), page(3, 1)], 4);
    images.plan([page(2, 2)], 4); // 2 is now the newest: 3, 2
    images.plan([page(4, 1)], 4); // 3 goes: 2, 4
    assert.deepEqual(images.plan([page(4, 1)], 4), [[]], '4 is kept');
    assert.deepEqual(images.plan([page(2, 2)], 4), [[]], '2 is kept');
    assert.deepEqual(images.plan([page(3, 1)], 4), [undefined], '3, used longest ago, was dropped');
  });

  it('forgets pages past a shrink, so a page that comes back comes whole', () => {
    const images = new PageImages(4096, 8);
    images.plan([page(5, 1), page(2, 1)], 5);
    images.plan([page(2, 2)], 3);
    assert.deepEqual(images.plan([page(5, 1), page(2, 2)], 5), [undefined, []]);
  });

  it('always sends page 1’s commit stamps, which the page hash leaves out', () => {
    const images = new PageImages(4096, 8);
    images.plan([page(1, 0)], 1);
    const runs = images.plan([page(1, 0)], 1)[0]!;
    const covered = (b: number): boolean => runs.some((_, i) => i % 2 === 0 && b >= runs[i]! && b < runs[i]! + runs[i + 1]!);
    for (const b of [24, 27, 92, 95, 96, 99]) assert.ok(covered(b), `byte ${b} of an unchanged page 1 is sent`);
    assert.ok(!covered(28) && !covered(100), 'and nothing else');
  });
});
