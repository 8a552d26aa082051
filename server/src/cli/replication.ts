import { Command } from 'commander';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../config.js';
import { openDatabase } from '../db/connection.js';
import { readAllPages } from '../replication/db-pages.js';
import { checksumPages } from '../replication/wire/checksum.js';
import { lastLoggedPosition } from '../replication/master/replication-log.js';
import { PositionFile } from '../replication/replica/position-file.js';
import { replicationDir } from '../server.js';
import { printJson } from './common.js';
import { callServer, serverOptions, type ServerFlags } from './server-api.js';

/** `replication status` asks a running server; `db checksum` reads a database file directly. */
export function replicationCommands(): Command[] {
  const replication = new Command('replication').description('HA replication');
  const status = replication.command('status').description('show a running server’s role, position, lag and replicas (GET /cluster/status)');
  for (const o of serverOptions()) status.addOption(o);
  status.action(async (f: ServerFlags) => printJson(await callServer(f, 'GET', '/cluster/status')));

  return [replication];
}

/** `db checksum`: added to the `db` group. */
export function checksumCommand(): Command {
  return new Command('checksum')
    .description('the replication checksum of a database file, to compare nodes by hand (read-only)')
    .option('--db <path>', 'database file (env NEBULAGC_DB_PATH)')
    .action((f: { db?: string }) => {
      const file = f.db ?? loadConfig(process.env).dbPath;
      if (!existsSync(file)) throw new Error(`no database at ${file}`);
      const conn = openDatabase(file, { readonly: true });
      try {
        conn.exec('BEGIN');
        const pageSize = conn.pragma('page_size', { simple: true }) as number;
        const sum = checksumPages(pageSize, readAllPages(conn));
        conn.exec('ROLLBACK');
        printJson({ db: path.resolve(file), checksum: sum.value, pages: sum.pageCount, page_size: pageSize, ...recordedPosition(file) });
      } finally {
        conn.close();
      }
    });
}

/** The position replication last recorded beside the database: a replica's file, or the master's log. */
function recordedPosition(dbPath: string): Record<string, unknown> {
  const dir = replicationDir(dbPath);
  const replicaFile = path.join(dir, 'replica.position');
  if (existsSync(replicaFile)) {
    const f = new PositionFile(replicaFile);
    try {
      return { replica_position: f.read() ?? null };
    } finally {
      f.close();
    }
  }
  const logDir = path.join(dir, 'log');
  if (existsSync(logDir)) return { master_log_position: lastLoggedPosition(logDir) ?? null };
  return {};
}
