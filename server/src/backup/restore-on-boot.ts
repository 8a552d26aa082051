import { existsSync, renameSync, rmSync } from 'node:fs';
import type { BackupConfig, Config } from '../config.js';
import { coordinatorFor } from '../ha/election/from-config.js';
import type { Logger } from '../log.js';
import { PositionFile } from '../replication/replica/position-file.js';
import { replicaPositionFile } from '../replication/replica/replica.js';
import { InternalClient } from '../replication/wire/internal-client.js';
import { PATHS } from '../replication/wire/protocol.js';
import type { Position } from '../replication/wire/record.js';
import { restoreBackup } from './restore.js';

export type BootRestore = 'off' | 'has-database' | 'master-reachable' | 'bootstrapped' | 'no-master' | 'empty-backup' | 'restored';

/**
 * NEBULAGC_RESTORE_ON_BOOT: a node with no database and no reachable master to copy from takes
 * the latest backup before it starts. The copy carries no replication position (that lives
 * beside a database, not in it), so the node starts from txid 0: it never claims to be ahead of
 * a live peer, and becomes master (on a new epoch) only when nothing better is there. A node
 * that has a master to follow takes a snapshot from it instead, which is newer than any backup.
 */
export async function restoreOnBoot(config: Config, replicationDir: string, log: Logger): Promise<BootRestore> {
  const backup = config.backup;
  if (!backup?.restoreOnBoot && !backup?.bootstrapFromBackup) return 'off';
  if (existsSync(config.dbPath)) return 'has-database';
  const master = await reachableMaster(config);
  if (master) {
    if (backup.bootstrapFromBackup && (await bootstrapFromBackup(config, backup, master, replicationDir, log))) return 'bootstrapped';
    log.info({ master }, 'a master is reachable: this node copies from it (a snapshot)');
    return 'master-reachable';
  }
  if (!backup.restoreOnBoot) return 'no-master';
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

/**
 * NEBULAGC_BOOTSTRAP_FROM_BACKUP: a new replica of a large database restores the latest backup,
 * which is near, and asks the master where that copy sits in its replication log (by its
 * checksum; a backup carries no txid). Found, the copy takes that position and streams the rest
 * from the master; not found (older than the log reaches, or another history), it is dropped and
 * the replica takes a snapshot as usual. False in every case but the first.
 */
async function bootstrapFromBackup(config: Config, backup: BackupConfig, master: string, replicationDir: string, log: Logger): Promise<boolean> {
  const partial = `${config.dbPath}.restoring`;
  rmSync(partial, { force: true });
  const drop = (): void => rmSync(partial, { force: true });
  let checksum: string;
  try {
    checksum = (await restoreBackup({ backup, dbPath: config.dbPath, output: partial, onLine: (line) => log.debug({ component: 'litestream' }, line) })).checksum;
  } catch (err) {
    drop();
    log.warn({ err: (err as Error).message }, 'could not restore the backup to bootstrap from it; taking a snapshot from the master instead');
    return false;
  }
  const client = new InternalClient({ baseUrl: master, secret: config.replication.secret!, tls: config.tls });
  let found: Position | undefined;
  try {
    const reply = await client.json('GET', `${PATHS.position}?checksum=${checksum}`);
    if (reply.status === 200) found = (reply.body as { position: Position }).position;
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'could not ask the master where the backup sits in its log');
  } finally {
    client.close();
  }
  if (!found) {
    drop();
    log.info({ checksum }, 'the backup is not in the master’s replication log (older than it reaches, or another history); taking a snapshot instead');
    return false;
  }
  renameSync(partial, config.dbPath);
  const file = new PositionFile(replicaPositionFile(replicationDir));
  file.write(found);
  file.close();
  log.info({ position: found, master }, 'bootstrapped from the backup: streaming the rest from the master’s log');
  return true;
}

/**
 * The master this node would copy from, if one answers: the configured one, or the lock holder
 * in auto mode. A holder that does not answer is waited out (at most twice the lock's TTL): it
 * is a master lost with the rest, and until its lock lapses this node would follow it, with a
 * restored copy it could never be elected with.
 */
async function reachableMaster(config: Config): Promise<string | undefined> {
  const auto = config.ha.auto;
  if (!auto) return config.haMode === 'replica' && config.replication.masterUrl && (await answers(config.replication.masterUrl)) ? config.replication.masterUrl : undefined;
  const coordinator = coordinatorFor(auto);
  try {
    const until = Date.now() + 2 * auto.lockTtlS * 1000 + 1000;
    for (;;) {
      const url = (await coordinator.holder())?.url;
      if (!url) return undefined;
      if (await answers(url)) return url;
      if (Date.now() > until) return undefined;
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    await coordinator.close();
  }
}

async function answers(url: string): Promise<boolean> {
  try {
    return (await fetch(`${url}/health/master`, { method: 'HEAD', signal: AbortSignal.timeout(2000) })).ok;
  } catch {
    return false;
  }
}
