import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openDatabase, type Db } from '../../server/src/db/connection.js';

/**
 * Replication applies page images through SQLite's sqlite_dbpage virtual table, which the
 * stock better-sqlite3 build lacks (scripts/ensure-sqlite-dbpage.mjs rebuilds it). These tests
 * prove the module is there, readable, and writable on an unsafe-mode connection, following the
 * rules in DESIGN.md §3: one statement per transaction, page 1 last, then (size+1, NULL) to truncate.
 */

let dir: string;
before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-dbpage-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

const file = (name: string): string => path.join(dir, name);
const pageCount = (db: Db): number => db.pragma('page_count', { simple: true }) as number;
const pageSize = (db: Db): number => db.pragma('page_size', { simple: true }) as number;

function readPages(db: Db): Buffer[] {
  const rows = db.prepare('SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno').all() as { pgno: number; data: Buffer }[];
  rows.forEach((r, i) => assert.equal(r.pgno, i + 1));
  return rows.map((r) => r.data);
}

/** Writes pages in one statement, page 1 last, then truncates to `size` pages. */
function applyPages(db: Db, pages: Map<number, Buffer>, size: number): void {
  const order = [...pages.keys()].filter((p) => p !== 1).sort((a, b) => a - b);
  if (pages.has(1)) order.push(1);
  const values: (number | Buffer | null)[] = [];
  for (const p of order) values.push(p, pages.get(p)!);
  values.push(size + 1, null);
  const sql = `INSERT INTO sqlite_dbpage(pgno, data) VALUES ${Array.from({ length: order.length + 1 }, () => '(?, ?)').join(', ')}`;
  db.transaction(() => db.prepare(sql).run(...values)).immediate();
}

function makeSource(name: string, rows: number): Db {
  const db = openDatabase(file(name), { synchronous: 'NORMAL' });
  db.exec('CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB)');
  db.exec('CREATE INDEX items_name ON items (name)');
  const ins = db.prepare('INSERT INTO items (id, name, payload) VALUES (?, ?, ?)');
  db.transaction(() => {
    for (let i = 1; i <= rows; i++) ins.run(i, `item-${String(i).padStart(5, '0')}`, Buffer.alloc(200, i % 256));
  })();
  return db;
}

const rowsOf = (db: Db): unknown[] => db.prepare('SELECT id, name, hex(payload) AS p FROM items ORDER BY id').all();
const integrity = (db: Db): unknown => db.pragma('integrity_check', { simple: true });

describe('sqlite_dbpage', () => {
  it('is compiled in and reads page 2 as a b-tree page of page_size bytes', () => {
    const a = makeSource('read.db', 200);
    try {
      const row = a.prepare('SELECT data FROM sqlite_dbpage WHERE pgno = 2').get() as { data: Buffer } | undefined;
      assert.ok(row, 'no page 2');
      assert.ok(Buffer.isBuffer(row.data));
      assert.equal(row.data.length, pageSize(a));
      // Page 2 is the root of the first table: a b-tree page, type 0x02/0x05/0x0a/0x0d.
      assert.ok([0x02, 0x05, 0x0a, 0x0d].includes(row.data[0]!), `page 2 starts with 0x${row.data[0]!.toString(16)}`);
      // Page 1 starts with the SQLite file header.
      const p1 = a.prepare('SELECT data FROM sqlite_dbpage WHERE pgno = 1').pluck().get() as Buffer;
      assert.equal(p1.subarray(0, 16).toString('latin1'), 'SQLite format 3\0');
      assert.equal(readPages(a).length, pageCount(a));
    } finally {
      a.close();
    }
  });

  it('refuses writes while the connection is in its default (defensive) mode', () => {
    const b = openDatabase(file('defensive.db'), { synchronous: 'NORMAL' });
    try {
      b.exec('CREATE TABLE t (x)');
      const p2 = b.prepare('SELECT data FROM sqlite_dbpage WHERE pgno = 2').pluck().get() as Buffer;
      assert.throws(() => b.prepare('INSERT INTO sqlite_dbpage(pgno, data) VALUES (?, ?)').run(2, p2));
    } finally {
      b.close();
    }
  });

  it('copies every page of A into a larger B: B then equals A and passes integrity_check', () => {
    const a = makeSource('copy-a.db', 500);
    // B: same page size, different and larger content, so the truncation row matters.
    const b = openDatabase(file('copy-b.db'), { synchronous: 'NORMAL' });
    try {
      b.exec('CREATE TABLE other (x TEXT)');
      const ins = b.prepare('INSERT INTO other VALUES (?)');
      b.transaction(() => {
        for (let i = 0; i < 2000; i++) ins.run('y'.repeat(300));
      })();
      assert.equal(pageSize(a), pageSize(b));
      const sourcePages = readPages(a);
      assert.ok(pageCount(b) > sourcePages.length, 'B should start larger than A');

      const reader = openDatabase(file('copy-b.db'), { readonly: true });
      try {
        assert.equal(reader.prepare('SELECT count(*) FROM other').pluck().get(), 2000);

        b.unsafeMode(true);
        applyPages(b, new Map(sourcePages.map((d, i) => [i + 1, d])), sourcePages.length);
        b.unsafeMode(false);

        // An already-open reader sees the applied transaction at its next read.
        assert.deepEqual(rowsOf(reader), rowsOf(a));
        assert.equal(reader.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'other'").pluck().get(), 0);
      } finally {
        reader.close();
      }

      // A fresh connection: same rows, integrity ok, and byte-identical pages.
      const check = openDatabase(file('copy-b.db'), { readonly: true });
      try {
        assert.equal(rowsOf(check).length, 500);
        assert.deepEqual(rowsOf(check), rowsOf(a));
        assert.equal(integrity(check), 'ok');
        assert.equal(pageCount(check), sourcePages.length);
        const copied = readPages(check);
        assert.equal(copied.length, sourcePages.length);
        copied.forEach((d, i) => assert.ok(d.equals(sourcePages[i]!), `page ${i + 1} differs`));
        // The index was copied too and is usable.
        assert.equal(check.prepare("SELECT id FROM items WHERE name = 'item-00042'").pluck().get(), 42);
      } finally {
        check.close();
      }
    } finally {
      a.close();
      b.close();
    }
  });

  it('applies only the pages a change touched, and the change becomes visible', () => {
    const a = makeSource('delta-a.db', 300);
    const b = openDatabase(file('delta-b.db'), { synchronous: 'NORMAL' });
    try {
      b.exec('CREATE TABLE placeholder (x)');
      const base = readPages(a);
      b.unsafeMode(true);
      applyPages(b, new Map(base.map((d, i) => [i + 1, d])), base.length);

      // Change A: update one row, delete a range (freeing pages), add a new table.
      a.prepare("UPDATE items SET name = 'renamed' WHERE id = 7").run();
      a.prepare('DELETE FROM items WHERE id > 150').run();
      a.exec("CREATE TABLE extra (v TEXT); INSERT INTO extra VALUES ('hello')");
      const next = readPages(a);
      const changed = new Map<number, Buffer>();
      next.forEach((d, i) => {
        const old = base[i];
        if (!old || !old.equals(d)) changed.set(i + 1, d);
      });
      assert.ok(changed.size > 0 && changed.size < next.length, `expected a partial delta, got ${changed.size}/${next.length} pages`);
      assert.ok(changed.has(1), 'a schema change should touch page 1');

      applyPages(b, changed, next.length);
      b.unsafeMode(false);

      const check = openDatabase(file('delta-b.db'), { readonly: true });
      try {
        assert.equal(check.prepare('SELECT name FROM items WHERE id = 7').pluck().get(), 'renamed');
        assert.equal(check.prepare('SELECT count(*) FROM items').pluck().get(), 150);
        assert.equal(check.prepare('SELECT v FROM extra').pluck().get(), 'hello');
        assert.deepEqual(rowsOf(check), rowsOf(a));
        assert.equal(integrity(check), 'ok');
        readPages(check).forEach((d, i) => assert.ok(d.equals(next[i]!), `page ${i + 1} differs`));
      } finally {
        check.close();
      }
    } finally {
      a.close();
      b.close();
    }
  });
});
