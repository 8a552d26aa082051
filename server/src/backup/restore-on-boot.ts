import { existsSync, renameSync, rmSync } from 'node:fs';
import type { Config } from '../config.js';
import { coordinatorFor } from '../ha/election/from-config.js';
import type { Logger } from '../log.js';
import { restoreBackup } from './restore.js';

export type BootRestore = 'off' | 'has-database' | 'master-reachable' | 'empty-backup' | 'restored';

/**
 * NEBULAGC_RESTORE_ON_BOOT: a node with no database and no reachable master to copy from takes
 * the latest backup before it starts. The copy carries no replication position (that lives
 * beside a database, not in it), so the node starts from txid 0: it never claims to be ahead of
 * a live peer, and becomes master (on a new epoch) only when nothing better is there. A node
 * that has a master to follow takes a snapshot from it instead, which is newer than any backup.
 */
export async function restoreOnBoot(config: Config, log: Logger): Promise<BootRestore> {
  const backup = config.backup;
  if (!backup?.restoreOnBoot) return 'off';
  if (existsSync(config.dbPath)) return 'has-database';
  const master = await reachableMaster(config);
  if (master) {
    log.info({ master }, 'restore on boot: a master is reachable; this node copies from it instead of the backup');
    return 'master-reachable';
  }
  const partial = `${config.dbPath}.restoring`;
  rmSync(partial, { force: true });
  log.info({ url: backup.url }, 'restore on boot: no database and no master; restoring the latest backup');
  try {
    const r = await restoreBackup({
      backup,
      dbPath: config.dbPath,
      output: partial,
      onLine: (line) => log.info({ component: 'litestream' }, line),
    });
    for (const suffix of ['-wal', '-shm']) rmSync(`${config.dbPath}${suffix}`, { force: true });
    renameSync(partial, config.dbPath);
    log.info(
      { bytes: r.bytes, checksum: r.checksum, generation: r.generation, last_upload_at: r.lastUploadAt, duration_ms: r.durationMs },
      'restore on boot: restored the latest backup (integrity_check ok)',
    );
    return 'restored';
  } catch (err) {
    rmSync(partial, { force: true });
    // A backup target with nothing in it is a new cluster's, not a failure. (Litestream says
    // the same of a wrong URL; the log line names the URL it looked at.)
    if (/^no backup found at /.test((err as Error).message)) {
      log.info({ url: backup.url }, 'restore on boot: the backup is empty; starting with a new database');
      return 'empty-backup';
    }
    throw new Error(`restore on boot failed: ${(err as Error).message}`);
  }
}

/** The master this node would copy from, if one answers: the configured one, or the lock holder in auto mode. */
async function reachableMaster(config: Config): Promise<string | undefined> {
  let url = config.haMode === 'replica' ? config.replication.masterUrl : undefined;
  const auto = config.ha.auto;
  if (auto) {
    const coordinator = coordinatorFor(auto);
    try {
      url = (await coordinator.holder())?.url;
    } finally {
      await coordinator.close();
    }
  }
  if (!url) return undefined;
  try {
    const res = await fetch(`${url}/health/master`, { method: 'HEAD', signal: AbortSignal.timeout(2000) });
    return res.ok ? url : undefined;
  } catch {
    return undefined;
  }
}
