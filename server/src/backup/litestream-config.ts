import { chmodSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { stringify } from 'yaml';
import type { BackupConfig } from '../config.js';

/**
 * Litestream's checkpoints, settled with the server's WAL capture (docs/HA.md, "Backups with
 * Litestream"). Litestream owns them: it holds a read transaction on the database all the time
 * except during its own checkpoint, so no checkpoint of ours could ever restart the WAL. The
 * minimum equals the maximum, so every checkpoint it takes is a RESTART, which starts the WAL
 * over; a PASSIVE one could not, with our capture pinning the WAL, and Litestream would then
 * checkpoint and write its `_litestream_seq` row at every sync, forever (86,000 uploads a day
 * from an idle master). A RESTART blocks writers while it copies, so the pages are few: 256
 * (1 MiB at our page size; docs/BENCHMARKS.md, "Writes under Litestream's checkpoints"). The
 * time-based checkpoint is off for the same reason.
 */
export const CHECKPOINT_PAGES = 256;

export type ReplicaTarget = { type: 's3'; bucket: string; path: string } | { type: 'file'; path: string };

export function replicaTarget(url: string): ReplicaTarget {
  const u = new URL(url);
  if (u.protocol === 'file:') return { type: 'file', path: decodeURIComponent(u.pathname) };
  return { type: 's3', bucket: u.hostname, path: decodeURIComponent(u.pathname).replace(/^\/+/, '') || 'nebulagc' };
}

/** The litestream.yml for replicating (and restoring) `dbPath` to the configured backup. */
export function litestreamConfig(dbPath: string, backup: BackupConfig): string {
  const target = replicaTarget(backup.url);
  const replica: Record<string, unknown> =
    target.type === 'file'
      ? { type: 'file', path: target.path }
      : {
          type: 's3',
          bucket: target.bucket,
          path: target.path,
          region: backup.region,
          ...(backup.endpoint ? { endpoint: backup.endpoint, 'force-path-style': true } : {}),
          ...(backup.accessKeyId ? { 'access-key-id': backup.accessKeyId } : {}),
          ...(backup.secretAccessKey ? { 'secret-access-key': backup.secretAccessKey } : {}),
        };
  return stringify({
    logging: { type: 'json', level: 'info' },
    dbs: [
      {
        path: path.resolve(dbPath),
        'checkpoint-interval': '0s',
        'min-checkpoint-page-count': CHECKPOINT_PAGES,
        'max-checkpoint-page-count': CHECKPOINT_PAGES,
        replicas: [{ ...replica, 'sync-interval': backup.syncInterval }],
      },
    ],
  });
}

/** Writes the config readable by this user alone: it may hold the S3 secret key. */
export function writeLitestreamConfig(file: string, dbPath: string, backup: BackupConfig): void {
  writeFileSync(file, litestreamConfig(dbPath, backup), { mode: 0o600 });
  // The mode of writeFileSync applies only to a file it creates.
  chmodSync(file, 0o600);
}

/** NEBULAGC_LITESTREAM_BIN, or the binary the @flydotio/litestream-linux-x64 package ships. */
export function litestreamBin(backup: Pick<BackupConfig, 'bin'>): string {
  if (backup.bin) return backup.bin;
  const pkg = createRequire(import.meta.url).resolve('@flydotio/litestream-linux-x64/package.json');
  return path.join(path.dirname(pkg), 'litestream');
}
