import assert from 'node:assert/strict';
import Database from 'better-sqlite3';

/** Every page of a database file, from a fresh read-only connection (pgno checked to run 1..n). */
export function pages(file: string): Buffer[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const rows = db.prepare('SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno').all() as { pgno: number; data: Buffer }[];
    rows.forEach((r, i) => assert.equal(r.pgno, i + 1, `${file}: sqlite_dbpage rows run 1..n`));
    return rows.map((r) => r.data);
  } finally {
    db.close();
  }
}

export function integrity(file: string): unknown {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.pragma('integrity_check', { simple: true });
  } finally {
    db.close();
  }
}

export function assertSamePages(a: Buffer[], b: Buffer[], what: string): void {
  assert.equal(b.length, a.length, `${what}: page count`);
  const differing = a.map((p, i) => (p.equals(b[i]!) ? 0 : i + 1)).filter((x) => x > 0);
  assert.deepEqual(differing, [], `${what}: pages that differ`);
}
