import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { litestreamBin } from '../../server/src/backup/litestream-config.js';

export const LITESTREAM = litestreamBin({ bin: undefined });

/** Every file under `dir` with its size: what a backup target holds. */
export function backupFiles(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  if (!existsSync(dir)) return out;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(path.relative(dir, p), statSync(p).size);
    }
  };
  walk(dir);
  return out;
}

/** Litestream's own commit counter in a database (0 before it wrote one). */
export function litestreamSeq(dbPath: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const has = db.prepare("SELECT 1 FROM sqlite_master WHERE name = '_litestream_seq'").get();
    return has ? ((db.prepare('SELECT seq FROM _litestream_seq WHERE id = 1').get() as { seq: number } | undefined)?.seq ?? 0) : 0;
  } finally {
    db.close();
  }
}

/** Pids of the litestream processes replicating with this config file. */
export function litestreamPids(configFile: string): number[] {
  const r = spawnSync('pgrep', ['-f', `litestream replicate -config ${configFile} `], { encoding: 'utf8' });
  return r.stdout.split('\n').filter((l) => l.trim() !== '').map(Number);
}

/** The config a managed node writes for itself. */
export const managedConfigFile = (dbPath: string): string => `${path.resolve(dbPath)}-replication/litestream.yml`;

/** `litestream restore` of a file replica to `output`; returns the tenants' names in it. */
export function restoreFileReplica(replicaDir: string, output: string): Set<string> {
  execFileSync(LITESTREAM, ['restore', '-o', output, `file://${replicaDir}`], { stdio: 'pipe' });
  const db = new Database(output, { readonly: true });
  try {
    if ((db.pragma('integrity_check', { simple: true }) as string) !== 'ok') throw new Error('the restored database fails integrity_check');
    return new Set((db.prepare('SELECT name FROM tenants').all() as { name: string }[]).map((r) => r.name));
  } finally {
    db.close();
  }
}
