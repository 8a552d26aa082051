import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * A node that finds its database diverged from the new master's history is about to overwrite
 * it with the master's copy. Whatever it committed after the fork would be lost without a
 * trace, so the whole file is kept first, and what differs from the master's copy is written
 * beside it for an operator to read (`nebulagc-server quarantine list|show`).
 *
 * An entry is a folder `<db>-quarantine/<id>/` holding `nebulagc.db`, `meta.json` and, once the
 * resync has installed the master's copy, `diff.json`. meta.json is written last on creation,
 * so a folder without one is a copy that never finished and is not listed.
 */

export interface QuarantineMeta {
  id: string;
  created_at: string;
  db_path: string;
  position: { epoch: number; txid: number; checksum: string };
  fork_txid: number | null;
  diverged_transactions: number | null;
  master_url: string | null;
  master_epoch: number | null;
  /** null until the diff is recorded (or when it failed: see diff_error). */
  changes: number | null;
  diff_error?: string;
}

export interface Change {
  table: string;
  key: Record<string, unknown>;
  /** created: only in the diverged copy; deleted: only in the current one; updated: same key, other values. */
  change: 'created' | 'deleted' | 'updated';
  summary: string;
  diverged?: Record<string, unknown>;
  current?: Record<string, unknown>;
}

const COPY = 'nebulagc.db';
const META = 'meta.json';
const DIFF = 'diff.json';

export function quarantineDir(dbPath: string): string {
  return `${path.resolve(dbPath)}-quarantine`;
}

export async function keepDivergedCopy(opts: {
  dbPath: string;
  position: { epoch: number; txid: number; checksum: string };
  forkTxid: number | undefined;
  masterUrl: string | undefined;
  masterEpoch: number | undefined;
}): Promise<QuarantineMeta> {
  const root = quarantineDir(opts.dbPath);
  // The copy holds everything the database does (token hashes, sealed keys): owner only.
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const now = new Date();
  const { id, dir } = makeEntryDir(root, `q-${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${opts.position.txid}`);
  try {
    const copy = path.join(dir, COPY);
    // The online backup reads through a connection, so commits still only in the -wal file are
    // included and a writer cannot tear the copy; copying the file alone would miss them.
    const source = new Database(opts.dbPath, { readonly: true, fileMustExist: true });
    try {
      await source.backup(copy);
    } finally {
      source.close();
    }
    // The backup keeps the source's WAL flag, and every later read-only open would then leave
    // -wal and -shm files behind; an archive is better as one self-contained file.
    const dest = new Database(copy);
    try {
      dest.pragma('journal_mode = DELETE');
    } finally {
      dest.close();
    }
    chmodSync(copy, 0o600);
    fsyncPath(copy);
    const meta: QuarantineMeta = {
      id,
      created_at: now.toISOString(),
      db_path: path.resolve(opts.dbPath),
      position: { ...opts.position },
      fork_txid: opts.forkTxid ?? null,
      diverged_transactions: opts.forkTxid === undefined ? null : opts.position.txid - opts.forkTxid,
      master_url: opts.masterUrl ?? null,
      master_epoch: opts.masterEpoch ?? null,
      changes: null,
    };
    writeJsonDurably(path.join(dir, META), meta);
    return meta;
  } catch (err) {
    // A half-made entry would only mislead; the caller decides whether to resync without one.
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Creates the entry folder under a fresh name: a second copy in the same second at the same position (a retried resync) gets a suffix, never the first one's folder. */
function makeEntryDir(root: string, base: string): { id: string; dir: string } {
  for (let n = 1; ; n++) {
    const id = n === 1 ? base : `${base}-${n}`;
    const dir = path.join(root, id);
    try {
      mkdirSync(dir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw err;
    }
    fsyncPath(root);
    return { id, dir };
  }
}

/**
 * Diffs the entry's copy against the master's copy now installed at currentDbPath. It runs in
 * the middle of a resync, which must go on whatever happens here, so a failure of the diff is
 * recorded in meta.diff_error rather than thrown.
 */
export function recordDiff(dbPath: string, id: string, currentDbPath: string): QuarantineMeta {
  const dir = entryDir(dbPath, id);
  const meta = readMeta(dir);
  try {
    const changes = diffDatabases(path.join(dir, COPY), currentDbPath);
    writeJsonDurably(path.join(dir, DIFF), changes);
    meta.changes = changes.length;
    delete meta.diff_error;
  } catch (err) {
    meta.changes = null;
    meta.diff_error = (err as Error).message;
  }
  writeJsonDurably(path.join(dir, META), meta);
  return meta;
}

export function listQuarantine(dbPath: string): QuarantineMeta[] {
  const root = quarantineDir(dbPath);
  if (!existsSync(root)) return [];
  const entries: QuarantineMeta[] = [];
  for (const d of readdirSync(root, { withFileTypes: true })) {
    if (d.isDirectory() && existsSync(path.join(root, d.name, META))) entries.push(readMeta(path.join(root, d.name)));
  }
  return entries.sort((a, b) => b.created_at.localeCompare(a.created_at) || b.id.localeCompare(a.id));
}

export function showQuarantine(dbPath: string, id: string): { meta: QuarantineMeta; changes: Change[] } {
  const dir = entryDir(dbPath, id);
  const meta = readMeta(dir);
  const diffFile = path.join(dir, DIFF);
  return { meta, changes: existsSync(diffFile) ? (readJson(diffFile) as Change[]) : [] };
}

/** The entry's folder; the id comes from a command line, so it must not climb out of the quarantine folder. */
function entryDir(dbPath: string, id: string): string {
  const root = quarantineDir(dbPath);
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(id)) throw new Error(`invalid quarantine id "${id}": only letters, digits, ".", "_" and "-" are allowed`);
  const dir = path.join(root, id);
  if (!existsSync(path.join(dir, META))) throw new Error(`no quarantine entry "${id}" in ${root}`);
  return dir;
}

function readMeta(dir: string): QuarantineMeta {
  return readJson(path.join(dir, META)) as QuarantineMeta;
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
}

/** Write, fsync, rename: meta.json is rewritten by recordDiff, and a crash must leave the old or the new one, never half of either. */
function writeJsonDurably(file: string, value: unknown): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
  fsyncPath(tmp);
  renameSync(tmp, file);
  fsyncPath(path.dirname(file));
}

function fsyncPath(p: string): void {
  const fd = openSync(p, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

type Value = number | bigint | string | Buffer | null;
type Row = Record<string, Value>;

interface Side {
  columns: string[];
  key: string[];
  /** Runs the query when called: one table side is read to its end before the other starts. */
  rows: () => Iterable<Row>;
}

/**
 * Row-by-row differences between two databases, each table matched by its declared primary key
 * (rowid when it declares none). Both are read in one read transaction on one connection, so
 * each side is a single consistent snapshot even while a server writes to the current one.
 */
export function diffDatabases(divergedPath: string, currentPath: string): Change[] {
  if (!existsSync(currentPath)) throw new Error(`no database at ${currentPath}`);
  const db = new Database(divergedPath, { readonly: true, fileMustExist: true });
  try {
    // Attached databases take the main connection's read-only flag.
    db.prepare('ATTACH DATABASE ? AS cur').run(currentPath);
    db.exec('BEGIN');
    const diverged = userTables(db, 'main');
    const current = userTables(db, 'cur');
    const changes: Change[] = [];
    for (const table of [...new Set([...diverged, ...current])].sort()) {
      const d = diverged.includes(table) ? readSide(db, 'main', table) : undefined;
      const c = current.includes(table) ? readSide(db, 'cur', table) : undefined;
      diffTable(table, d, c, changes);
    }
    db.exec('COMMIT');
    return changes;
  } finally {
    db.close();
  }
}

/** Ordinary tables only: SQLite's own, Litestream's bookkeeping, and virtual tables (whose data lives in shadow tables that are compared) are left out. */
function userTables(db: Database.Database, schema: string): string[] {
  const rows = db.prepare(`SELECT name, sql FROM ${schema}.sqlite_master WHERE type = 'table'`).all() as { name: string; sql: string | null }[];
  return rows
    .filter((r) => !r.name.startsWith('sqlite_') && !r.name.startsWith('_litestream') && !/^\s*CREATE\s+VIRTUAL\b/i.test(r.sql ?? ''))
    .map((r) => r.name);
}

const ROWID = 'rowid';

function readSide(db: Database.Database, schema: string, table: string): Side {
  const declared = db.prepare('SELECT name FROM pragma_table_info(?, ?) WHERE pk > 0 ORDER BY pk').all(table, schema) as { name: string }[];
  const key = declared.length > 0 ? declared.map((r) => r.name) : [ROWID];
  const select = declared.length > 0 ? '*' : `_rowid_ AS ${ROWID}, *`;
  const stmt = db.prepare(`SELECT ${select} FROM ${schema}.${quote(table)} ORDER BY ${key.map(quote).join(', ')}`);
  // Integers come as bigint so that keys and values beyond 2^53 compare exactly.
  stmt.safeIntegers(true);
  return { columns: stmt.columns().map((c) => c.name), key, rows: () => stmt.iterate() as Iterable<Row> };
}

function diffTable(table: string, diverged: Side | undefined, current: Side | undefined, out: Change[]): void {
  if (diverged && current && diverged.key.join('\0') !== current.key.join('\0')) {
    throw new Error(`table ${table} is keyed by (${diverged.key.join(', ')}) in the diverged copy but by (${current.key.join(', ')}) in the current one`);
  }
  const key = (diverged ?? current)!.key;
  // Columns only one side has (a migration one side ran) say nothing about the rows' data.
  const compared = diverged && current ? diverged.columns.filter((c) => current.columns.includes(c)) : [];
  const remaining = new Map<string, Row>();
  if (current) for (const row of current.rows()) remaining.set(keyOf(row, key), row);
  if (diverged) {
    for (const row of diverged.rows()) {
      const k = keyOf(row, key);
      const other = remaining.get(k);
      if (!other) {
        out.push(change(table, key, 'created', row, undefined));
        continue;
      }
      remaining.delete(k);
      const differing = compared.filter((c) => !sameValue(row[c] ?? null, other[c] ?? null));
      if (differing.length > 0) out.push(change(table, key, 'updated', row, other, differing));
    }
  }
  for (const row of remaining.values()) out.push(change(table, key, 'deleted', undefined, row));
}

function change(table: string, key: string[], kind: Change['change'], diverged: Row | undefined, current: Row | undefined, differing: string[] = []): Change {
  const row = (diverged ?? current)!;
  const keyShown = Object.fromEntries(key.map((k) => [k, shown(row[k] ?? null)]));
  const label = labelOf(row, key);
  const keyText = key.map((k) => `${k}=${short(textOf(row[k] ?? null), 8)}`).join(',');
  let summary = `${table} ${keyText} ${kind}`;
  if (label) summary += `: ${label}`;
  if (differing.length > 0) summary += `${label ? ';' : ':'} differs in ${differing.join(', ')}`;
  const c: Change = { table, key: keyShown, change: kind, summary };
  if (diverged) c.diverged = shownRow(diverged);
  if (current) c.current = shownRow(current);
  return c;
}

/** The row's most telling text: its name, else its first text value that is not the key (already shown). */
function labelOf(row: Row, key: string[]): string | undefined {
  if (typeof row.name === 'string') return `name=${JSON.stringify(short(row.name, 60))}`;
  const col = Object.keys(row).find((c) => !key.includes(c) && typeof row[c] === 'string');
  return col === undefined ? undefined : `${col}=${JSON.stringify(short(row[col] as string, 60))}`;
}

function short(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

function textOf(v: Value): string {
  if (Buffer.isBuffer(v)) return `x'${short(v.toString('hex'), 16)}'`;
  return v === null ? 'NULL' : String(v);
}

/** A key as a string a Map can hold, with each value's type in it: 1 (integer), 1.0 (real) and '1' are different keys to SQLite. */
function keyOf(row: Row, key: string[]): string {
  return JSON.stringify(key.map((k) => tagged(row[k] ?? null)));
}

function tagged(v: Value): string {
  if (v === null) return 'n';
  if (typeof v === 'bigint') return `i${v}`;
  if (typeof v === 'number') return `r${v}`;
  if (typeof v === 'string') return `t${v}`;
  return `b${v.toString('hex')}`;
}

function sameValue(a: Value, b: Value): boolean {
  if (Buffer.isBuffer(a) || Buffer.isBuffer(b)) return Buffer.isBuffer(a) && Buffer.isBuffer(b) && a.equals(b);
  return typeof a === typeof b && a === b;
}

function shownRow(row: Row): Record<string, unknown> {
  return Object.fromEntries(Object.entries(row).map(([k, v]) => [k, shown(v)]));
}

/** JSON-safe: bigints as numbers where exact (as strings beyond), BLOBs by size and hash. */
function shown(v: Value): unknown {
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  if (Buffer.isBuffer(v)) return { blob_bytes: v.length, sha256: createHash('sha256').update(v).digest('hex') };
  return v;
}

function quote(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
