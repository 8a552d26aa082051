import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { Db } from '../../../server/src/db/connection.js';
import { checksumHex, checksumPages, DbChecksum, pageHash } from '../../../server/src/replication/wire/checksum.js';
import { openMaster, pageCount, pageSize, randomBytes, readPages, rng, tempDir, type TempDir } from './fixtures.js';

type Page = { pgno: number; data: Buffer };

/** The definition of DESIGN §4, computed independently: XOR over all pages of pageHash. */
function reference(pages: Page[]): string {
  let a = 0;
  let b = 0;
  for (const p of pages) {
    const [x, y] = pageHash(p.pgno, p.data);
    a = (a ^ x) >>> 0;
    b = (b ^ y) >>> 0;
  }
  return checksumHex(a, b);
}

/** The pages of a database file on disk, split by page size. */
function filePages(file: string, size: number): Page[] {
  const bytes = readFileSync(file);
  assert.equal(bytes.length % size, 0);
  const out: Page[] = [];
  for (let i = 0; i * size < bytes.length; i++) out.push({ pgno: i + 1, data: bytes.subarray(i * size, (i + 1) * size) });
  return out;
}

function unaligned(buf: Buffer, offset: number): Buffer {
  const big = Buffer.alloc(buf.length + offset);
  buf.copy(big, offset);
  return big.subarray(offset);
}

describe('DbChecksum', () => {
  let tmp: TempDir;
  let db: Db;
  let pages: Page[];
  let size: number;

  before(() => {
    tmp = tempDir('cksum');
    db = openMaster(tmp.file('m.db'));
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)');
    db.exec('CREATE INDEX t_body ON t (body)');
    const next = rng(1);
    const ins = db.prepare('INSERT INTO t (body) VALUES (?)');
    db.transaction(() => {
      for (let i = 0; i < 200; i++) ins.run(randomBytes(400, next));
    })();
    pages = readPages(db);
    size = pageSize(db);
  });
  after(() => {
    db.close();
    tmp.remove();
  });

  it('has a database of about 50 pages to work on', () => {
    assert.ok(pages.length >= 40 && pages.length <= 80, `${pages.length} pages`);
    assert.equal(pages.length, pageCount(db));
  });

  it('equals the XOR of page hashes, whether built by checksumPages or page by page', () => {
    const scratch = checksumPages(size, pages);
    assert.equal(scratch.value, reference(pages));
    assert.equal(scratch.pageCount, pages.length);
    const byHand = new DbChecksum(size);
    for (const p of [...pages].reverse()) byHand.setPage(p.pgno, p.data); // order does not matter
    assert.equal(byHand.value, scratch.value);
    assert.match(scratch.value, /^[0-9a-f]{16}$/);
  });

  it('changes when any single page changes, and equals a checksum computed from scratch over the pages', () => {
    const base = checksumPages(size, pages);
    const seen = new Set<string>([base.value]);
    const next = rng(2);
    for (const p of pages) {
      for (const at of [0, 1 + Math.floor(next() * (size - 2)), size - 1]) {
        const changed = Buffer.from(p.data);
        changed[at]! ^= 1 << Math.floor(next() * 8);
        const c = base.clone();
        c.setPage(p.pgno, changed);
        assert.notEqual(c.value, base.value, `page ${p.pgno} byte ${at}`);
        const all = pages.map((q) => (q.pgno === p.pgno ? { pgno: q.pgno, data: changed } : q));
        assert.equal(c.value, checksumPages(size, all).value, `page ${p.pgno} byte ${at}: incremental = from scratch`);
        seen.add(c.value);
        // Setting the page back restores the checksum: the old hash leaves the XOR.
        c.setPage(p.pgno, p.data);
        assert.equal(c.value, base.value);
      }
    }
    assert.equal(seen.size, 1 + pages.length * 3, 'every single-page change gave a distinct checksum');
    assert.equal(base.value, checksumPages(size, pages).value, 'clone() left the original alone');
  });

  it('updated page by page across real writes, it equals a from-scratch checksum over the file', () => {
    const c = checksumPages(size, readPages(db));
    let known = new Map(readPages(db).map((p) => [p.pgno, p.data]));
    const next = rng(3);
    const steps: (() => void)[] = [
      () => db.prepare('INSERT INTO t (body) VALUES (?)').run(randomBytes(50_000, next)), // grows
      () => db.exec('UPDATE t SET body = randomblob(100) WHERE id % 7 = 0'),
      () => db.exec('CREATE TABLE u (x)'),
      () => db.exec('DELETE FROM t WHERE id > 100'),
      () => db.exec('DROP TABLE u'),
      () => db.exec('VACUUM'), // shrinks
      () => db.exec("INSERT INTO t (body) SELECT randomblob(300) FROM t WHERE id < 20"),
    ];
    let grew = false;
    let shrank = false;
    for (const step of steps) {
      const before = c.pageCount;
      step();
      // Read the pages back and feed only the ones that changed, as capture does.
      const now = readPages(db);
      for (const p of now) {
        const old = known.get(p.pgno);
        if (!old || !old.equals(p.data)) c.setPage(p.pgno, p.data);
      }
      c.resize(now.length);
      grew ||= now.length > before;
      shrank ||= now.length < before;
      known = new Map(now.map((p) => [p.pgno, p.data]));
      assert.equal(c.pageCount, pageCount(db));
      assert.equal(c.value, checksumPages(size, now).value);
    }
    assert.ok(grew && shrank, 'the workload both grew and shrank the database');
    // The file itself, once the WAL is checkpointed into it.
    const [r] = db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
    assert.equal(r!.busy, 0);
    const onDisk = filePages(tmp.file('m.db'), size);
    assert.equal(c.value, checksumPages(size, onDisk).value);
    assert.equal(c.value, reference(onDisk));
  });

  it('resize down drops pages; resize up adds zero pages', () => {
    const base = checksumPages(size, pages);
    const n = pages.length;
    const c = base.clone();
    c.resize(n - 10);
    assert.equal(c.pageCount, n - 10);
    assert.equal(c.value, reference(pages.slice(0, n - 10)));
    assert.notEqual(c.value, base.value);
    c.resize(n);
    const zeroTail = pages.map((p) => (p.pgno > n - 10 ? { pgno: p.pgno, data: Buffer.alloc(size) } : p));
    assert.equal(c.value, reference(zeroTail));
    assert.notEqual(c.value, base.value, 'the real pages did not come back by themselves');
    for (const p of pages.slice(n - 10)) c.setPage(p.pgno, p.data);
    assert.equal(c.value, base.value);
    // Growing by setting a page far past the end counts the gap as zero pages.
    const g = base.clone();
    const far = n + 5;
    const farData = randomBytes(size, rng(4));
    g.setPage(far, farData);
    assert.equal(g.pageCount, far);
    const expected = [...pages];
    for (let p = n + 1; p < far; p++) expected.push({ pgno: p, data: Buffer.alloc(size) });
    expected.push({ pgno: far, data: farData });
    assert.equal(g.value, reference(expected));
    g.resize(n);
    assert.equal(g.value, base.value);
    // hashOf answers for pages that exist only.
    assert.deepEqual(base.hashOf(3), pageHash(3, pages[2]!.data));
    assert.equal(base.hashOf(0), undefined);
    assert.equal(base.hashOf(n + 1), undefined);
  });

  it('grows past its initial capacity', () => {
    const small = new DbChecksum(64);
    const list: Page[] = [];
    const next = rng(5);
    for (let p = 1; p <= 1000; p++) {
      const data = randomBytes(64, next);
      list.push({ pgno: p, data });
      small.setPage(p, data);
    }
    assert.equal(small.value, reference(list));
  });

  it('swapped pages give a different checksum', () => {
    const base = checksumPages(size, pages);
    for (const [i, j] of [
      [1, 2],
      [2, 3],
      [5, 40],
    ] as const) {
      assert.ok(!pages[i - 1]!.data.equals(pages[j - 1]!.data), 'pages differ');
      const c = base.clone();
      c.setPage(i, pages[j - 1]!.data);
      c.setPage(j, pages[i - 1]!.data);
      assert.notEqual(c.value, base.value, `swap ${i} and ${j}`);
    }
    // The same bytes at different page numbers hash differently.
    assert.notDeepEqual(pageHash(2, pages[1]!.data), pageHash(3, pages[1]!.data));
    // Two identical pages do not cancel out in the XOR.
    const twins = [
      { pgno: 1, data: pages[0]!.data },
      { pgno: 2, data: Buffer.alloc(size, 7) },
      { pgno: 3, data: Buffer.alloc(size, 7) },
    ];
    assert.notEqual(reference(twins), reference([twins[0]!]));
  });

  it('checksumHex is 16 lower-case hex digits, high half first', () => {
    const ref = (a: number, b: number): string => (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
    const next = rng(5);
    const values = [0, 1, 0xf, 0x10, 0x7fffffff, 0x80000000, 0xffffffff, -1];
    for (let i = 0; i < 200; i++) values.push(Math.floor(next() * 2 ** 32));
    for (const a of values) assert.equal(checksumHex(a, values[(a >>> 3) % values.length]!), ref(a, values[(a >>> 3) % values.length]!));
    assert.equal(checksumHex(0xabcdef01, 0x11), 'abcdef0100000011');
  });

  it('pageHash is deterministic, independent of alignment, and sees every word', () => {
    const p = pages[4]!;
    const h = pageHash(p.pgno, p.data);
    assert.deepEqual(pageHash(p.pgno, Buffer.from(p.data)), h);
    for (const off of [1, 2, 3, 4]) assert.deepEqual(pageHash(p.pgno, unaligned(p.data, off)), h, `byteOffset +${off}`);
    for (let w = 0; w < size / 4; w++) {
      const bad = Buffer.from(p.data);
      bad[w * 4 + (w % 4)]! ^= 0x80;
      assert.notDeepEqual(pageHash(p.pgno, bad), h, `word ${w}`);
      assert.deepEqual(pageHash(p.pgno, unaligned(bad, 1)), pageHash(p.pgno, bad), `word ${w} unaligned`);
    }
    assert.notDeepEqual(pageHash(1, Buffer.alloc(size)), pageHash(2, Buffer.alloc(size)));
  });
});
