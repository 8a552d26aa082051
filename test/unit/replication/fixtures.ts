import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { openDatabase, type Db } from '../../../server/src/db/connection.js';

/** Shared helpers of the replication unit tests (not a test file itself). */

export interface TempDir {
  path: string;
  file(name: string): string;
  remove(): void;
}

export function tempDir(prefix: string): TempDir {
  const dir = mkdtempSync(path.join(os.tmpdir(), `nebulagc-${prefix}-`));
  return { path: dir, file: (name) => path.join(dir, name), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A temp dir removed when the test `t` ends, pass or fail. */
export function testDir(t: TestContext, prefix: string): TempDir {
  const dir = tempDir(prefix);
  t.after(() => dir.remove());
  return dir;
}

/** A writer connection fit to be a capture master: WAL mode, autocheckpoint off. */
export function openMaster(file: string): Db {
  const db = openDatabase(file, { synchronous: 'NORMAL' });
  db.pragma('wal_autocheckpoint = 0');
  return db;
}

export const pageCount = (db: Db): number => db.pragma('page_count', { simple: true }) as number;
export const pageSize = (db: Db): number => db.pragma('page_size', { simple: true }) as number;

export function readPages(db: Db): { pgno: number; data: Buffer }[] {
  return db.prepare('SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno').all() as { pgno: number; data: Buffer }[];
}

/**
 * Every page of a database, read from a fresh read-only connection (so nothing cached from an
 * applier's stale schema can hide a difference), with pgno checked to run 1..n.
 */
export function pagesOf(file: string): Buffer[] {
  const db = openDatabase(file, { readonly: true });
  try {
    const rows = readPages(db);
    rows.forEach((r, i) => assert.equal(r.pgno, i + 1, 'sqlite_dbpage rows run 1..n'));
    return rows.map((r) => r.data);
  } finally {
    db.close();
  }
}

export function integrityOf(file: string): unknown {
  const db = openDatabase(file, { readonly: true });
  try {
    return db.pragma('integrity_check', { simple: true });
  } finally {
    db.close();
  }
}

/** A deterministic pseudo-random generator (mulberry32), so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(n: number, next: () => number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(next() * 256);
  return b;
}
