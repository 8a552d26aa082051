import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import type { BackupConfig } from '../config.js';
import { openDatabase, type Db } from '../db/connection.js';
import { readAllPages } from '../replication/db-pages.js';
import { checksumPages } from '../replication/wire/checksum.js';
import { litestreamBin, writeLitestreamConfig } from './litestream-config.js';
import { parseLitestreamLine } from './litestream-log.js';

export interface RestoreOptions {
  backup: BackupConfig;
  /**
   * The database the backup was taken of (the master's NEBULAGC_DB_PATH). It only names the
   * database in the Litestream config; the backup itself is found at `backup.url`.
   */
  dbPath: string;
  /** A new file: restore never overwrites one. */
  output: string;
  /** RFC 3339: restore what had been uploaded at that time instead of the latest. */
  timestamp?: string;
  /** Litestream's log lines (JSON), credentials removed. */
  onLine?: (line: string) => void;
  signal?: AbortSignal;
}

export interface RestoreResult {
  output: string;
  bytes: number;
  pages: number;
  pageSize: number;
  integrity: 'ok';
  /** The replication checksum, as `nebulagc-server db checksum` prints it: compare with a live node. */
  checksum: string;
  restoredAt: string;
  durationMs: number;
  /** Litestream's generation the copy came from. */
  generation?: string;
  /** The highest WAL index restored (Litestream names it in hex in the backup's file names). */
  walIndex?: number;
  timestamp?: string;
  /**
   * When the newest WAL segment in the copy was uploaded, to the second as `litestream wal` lists
   * it. The copy holds nothing committed after it. There is no finer position: the replication
   * txid lives beside a database (`<db>-replication/`), not in it.
   */
  lastUploadAt?: string;
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-](\d{2}):(\d{2}))$/;

/** What Go's time.RFC3339 parses, which is what `litestream restore -timestamp` takes. */
export function isRfc3339(value: string): boolean {
  const m = RFC3339.exec(value);
  if (!m) return false;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const date = new Date(Date.UTC(y, mo - 1, d, h, mi, s));
  const zoneOk = m[8] === 'Z' || (Number(m[9]) < 24 && Number(m[10]) < 60);
  return zoneOk && date.getUTCFullYear() === y && date.getUTCMonth() === mo - 1 && date.getUTCDate() === d && h < 24 && mi < 60 && s < 60;
}

const run = promisify(execFile);

/**
 * Restores the backup at `backup.url` into a new file with `litestream restore`, then checks
 * it: PRAGMA integrity_check must say ok (else the file is deleted), and its replication
 * checksum is computed so that it can be compared with a live node's. The Litestream config,
 * which may hold the S3 secret key, lives in a private temp dir for the duration only.
 */
export async function restoreBackup(opts: RestoreOptions): Promise<RestoreResult> {
  opts.signal?.throwIfAborted();
  const started = Date.now();
  const { backup } = opts;
  const output = path.resolve(opts.output);
  const dbPath = path.resolve(opts.dbPath);
  if (opts.timestamp !== undefined && !isRfc3339(opts.timestamp)) throw new Error(`invalid timestamp "${opts.timestamp}": must be RFC 3339, e.g. 2026-01-02T15:04:05Z`);
  // A -wal or -shm without its database would be applied to the restored file on first open.
  for (const file of [output, `${output}-wal`, `${output}-shm`]) {
    if (existsSync(file)) throw new Error(`${file} already exists: restore writes a new file and never replaces one (nor does litestream); move it away or choose another --output`);
  }
  const secrets = [backup.secretAccessKey, backup.accessKeyId].filter((s): s is string => !!s);
  const redact = (text: string): string => secrets.reduce((t, s) => t.split(s).join('[redacted]'), text);
  const bin = binary(backup);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-restore-'));
  const config = path.join(dir, 'litestream.yml');
  // Our config is final: without -no-expand-env a `$` in a key or a path would be expanded.
  const common = ['-config', config, '-no-expand-env'];
  try {
    writeLitestreamConfig(config, dbPath, backup);
    const args = ['restore', ...common, '-o', output, ...(opts.timestamp ? ['-timestamp', opts.timestamp] : []), dbPath];
    const restored = await runRestore(bin, args, redact, opts);
    if (opts.signal?.aborted) {
      removeDatabase(output);
      throw opts.signal.reason ?? new Error('restore aborted');
    }
    if (restored.code !== 0) {
      removeDatabase(output);
      const error = restored.error ?? `exit status ${restored.code}`;
      if (/no matching backups found/.test(error)) throw new Error(await noBackupMessage(bin, common, dbPath, backup.url, opts.timestamp, redact));
      throw new Error(`litestream restore failed: ${error}`);
    }
    if (!existsSync(output)) throw new Error(`litestream restore exited 0 but wrote no ${output}`);
    const verified = verify(output);
    const lastUploadAt =
      restored.generation === undefined ? undefined : await lastUpload(bin, common, dbPath, restored.generation, restored.walIndex, opts.timestamp);
    return {
      output,
      bytes: statSync(output).size,
      pages: verified.pages,
      pageSize: verified.pageSize,
      integrity: 'ok',
      checksum: verified.checksum,
      restoredAt: new Date().toISOString(),
      durationMs: Date.now() - started,
      ...(restored.generation === undefined ? {} : { generation: restored.generation }),
      ...(restored.walIndex === undefined ? {} : { walIndex: restored.walIndex }),
      ...(opts.timestamp === undefined ? {} : { timestamp: opts.timestamp }),
      ...(lastUploadAt === undefined ? {} : { lastUploadAt }),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
    removeLitestreamTemps(output);
  }
}

function binary(backup: BackupConfig): string {
  try {
    return litestreamBin(backup);
  } catch {
    throw new Error('litestream is not installed (package @flydotio/litestream-linux-x64): set NEBULAGC_LITESTREAM_BIN to its binary');
  }
}

interface Restored {
  code: number | null;
  /** The last error Litestream reported. */
  error?: string;
  generation?: string;
  walIndex?: number;
}

function runRestore(bin: string, args: string[], redact: (s: string) => string, opts: RestoreOptions): Promise<Restored> {
  const result: Restored = { code: null };
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const abort = (): void => void child.kill('SIGTERM');
  opts.signal?.addEventListener('abort', abort, { once: true });
  if (opts.signal?.aborted) abort();
  const onLine = (raw: string): void => {
    const line = redact(raw);
    const parsed = parseLitestreamLine(line);
    // Go's wrapped errors span lines ("...\ncaused by: ..."): ours is one.
    if (parsed?.level === 'ERROR') result.error = (parsed.error ?? parsed.msg).replace(/\s*\n\s*/g, '; ');
    const { generation, index, index_max: indexMax } = parsed?.fields ?? {};
    if (parsed?.msg === 'restoring snapshot') {
      if (typeof generation === 'string') result.generation = generation;
      if (typeof index === 'number') result.walIndex = index;
    }
    if (parsed?.msg === 'restoring wal files' && typeof indexMax === 'number') result.walIndex = indexMax;
    opts.onLine?.(line);
  };
  const streams = [child.stdout, child.stderr].map(
    (stream) => new Promise<void>((resolve) => createInterface({ input: stream }).on('line', onLine).once('close', resolve)),
  );
  return new Promise((resolve, reject) => {
    child.once('error', (err) => {
      opts.signal?.removeEventListener('abort', abort);
      reject(new Error(`could not run ${bin}: ${err.message}`));
    });
    child.once('exit', (code) => {
      opts.signal?.removeEventListener('abort', abort);
      void Promise.all(streams).then(() => resolve({ ...result, code }));
    });
  });
}

/** integrity_check, then the checksum of every page, on a read-only connection. A copy that fails is deleted. */
function verify(output: string): { pages: number; pageSize: number; checksum: string } {
  let conn: Db | undefined;
  let result: { pages: number; pageSize: number; checksum: string };
  try {
    conn = openDatabase(output, { readonly: true });
    const problems = (conn.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check);
    if (problems.length !== 1 || problems[0] !== 'ok') {
      throw new Error(`integrity_check: ${problems.slice(0, 3).join('; ')}${problems.length > 3 ? ` (and ${problems.length - 3} more)` : ''}`);
    }
    conn.exec('BEGIN');
    const pageSize = conn.pragma('page_size', { simple: true }) as number;
    const sum = checksumPages(pageSize, readAllPages(conn));
    conn.exec('ROLLBACK');
    conn.close();
    result = { pages: sum.pageCount, pageSize, checksum: sum.value };
  } catch (err) {
    if (conn?.open) conn.close();
    removeDatabase(output);
    throw new Error(`the restored database failed verification, so it was deleted: ${(err as Error).message}`);
  }
  // A read-only connection leaves an empty -wal and its -shm behind; the copy is whole without them.
  if (statSync(`${output}-wal`, { throwIfNoEntry: false })?.size === 0) for (const suffix of ['-wal', '-shm']) rmSync(`${output}${suffix}`, { force: true });
  return result;
}

/**
 * Litestream restores into <output>.tmp, downloads each WAL index to <output>.tmp-<index>-wal
 * (v0.3.13, replica.go), and leaves some behind: the -wal and -shm always, the rest when stopped.
 */
function removeLitestreamTemps(output: string): void {
  const dir = path.dirname(output);
  const tmp = `${path.basename(output)}.tmp`;
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    if (name.startsWith(tmp) && /^(-[0-9a-f]{8}-wal|-wal|-shm)?$/.test(name.slice(tmp.length))) rmSync(path.join(dir, name), { force: true });
  }
}

function removeDatabase(file: string): void {
  for (const suffix of ['', '-wal', '-shm']) rmSync(`${file}${suffix}`, { force: true });
}

/** Rows of a `litestream generations|wal` table, keyed by its header. */
async function listing(bin: string, args: string[]): Promise<Record<string, string>[]> {
  const { stdout } = await run(bin, args, { timeout: 60_000 });
  const [header, ...rows] = stdout.trim().split('\n').map((l) => l.trim().split(/\s+/));
  return rows.map((cells) => Object.fromEntries((header ?? []).map((h, i) => [h, cells[i] ?? ''])));
}

/**
 * The upload time of the newest segment the restore took: Litestream applies every segment at
 * or below the restored index, and at or before the timestamp. Best effort: the copy is already
 * verified, and a failed listing leaves the field out.
 */
async function lastUpload(bin: string, common: string[], dbPath: string, generation: string, walIndex: number | undefined, timestamp: string | undefined): Promise<string | undefined> {
  try {
    const limit = timestamp === undefined ? Infinity : Date.parse(timestamp);
    const times = (await listing(bin, ['wal', ...common, '-generation', generation, dbPath]))
      .filter((r) => r.generation === generation && (walIndex === undefined || Number(r.index) <= walIndex))
      .map((r) => Date.parse(r.created ?? ''))
      .filter((t) => t <= limit);
    return times.length === 0 ? undefined : new Date(Math.max(...times)).toISOString().replace('.000Z', 'Z');
  } catch {
    return undefined;
  }
}

/** Litestream says "no matching backups found" both for an empty store and for a timestamp outside every generation. */
async function noBackupMessage(bin: string, common: string[], dbPath: string, url: string, timestamp: string | undefined, redact: (s: string) => string): Promise<string> {
  let generations: Record<string, string>[];
  try {
    generations = await listing(bin, ['generations', ...common, dbPath]);
  } catch (err) {
    return `no backup found at ${url}, and litestream could not list its generations: ${redact((err as Error).message).replace(/\s*\n\s*/g, '; ')}`;
  }
  if (generations.length === 0) return `no backup found at ${url}: it holds no generation (is this the right NEBULAGC_LITESTREAM_URL?)`;
  const spans = generations.map((g) => `${g.generation} from ${g.start} to ${g.end}`).join(', ');
  if (timestamp === undefined) return `no backup found at ${url} (generations: ${spans})`;
  const at = Date.parse(timestamp);
  // The listing is to the second: a time in a generation's last second is not after it.
  const hint =
    generations.every((g) => at >= Date.parse(g.end ?? '') + 1000)
      ? '; nothing was uploaded after the last one, so the latest backup (restore without --timestamp) is the newest state at or before that time'
      : generations.every((g) => at < Date.parse(g.start ?? ''))
        ? '; the backup keeps no older generation (Litestream keeps 24 h of snapshots and WAL by default)'
        : '';
  return `no backup at ${url} covers ${timestamp}: litestream restores to a time only within a generation, from its first upload to its last (${spans})${hint}`;
}
