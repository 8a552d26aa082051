import { Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../config.js';
import { openDatabase } from '../db/connection.js';
import { readAllPages } from '../replication/capture.js';
import { checksumPages } from '../replication/checksum.js';
import { lastLoggedPosition } from '../replication/log.js';
import { PositionFile } from '../replication/state-file.js';
import { replicationDir } from '../server.js';
import { printJson } from './common.js';

/** `replication status` asks a running server; `db checksum` reads a database file directly. */
export function replicationCommands(): Command[] {
  const replication = new Command('replication').description('HA replication');
  replication
    .command('status')
    .description('show a running server’s role, position, lag and replicas (GET /cluster/status)')
    .option('--url <url>', 'the server’s API URL (default: from NEBULAGC_LISTEN)')
    .option('--token-file <file>', 'file holding the operator token (default: env NEBULAGC_OPERATOR_TOKEN)')
    .action(async (f: { url?: string; tokenFile?: string }) => {
      const config = loadConfig(process.env);
      const token = f.tokenFile ? readFileSync(f.tokenFile, 'utf8').trim() : config.operatorToken;
      if (!token) throw new Error('an operator token is needed: set NEBULAGC_OPERATOR_TOKEN or pass --token-file');
      const host = ['0.0.0.0', '::'].includes(config.listen.host) ? '127.0.0.1' : config.listen.host;
      const url = (f.url ?? `${config.tls ? 'https' : 'http'}://${host}:${config.listen.port}`).replace(/\/+$/, '');
      const res = await fetch(`${url}/cluster/status`, { headers: { authorization: `Bearer ${token}` } });
      const body = (await res.json()) as unknown;
      if (!res.ok) throw new Error(`${url}/cluster/status answered ${res.status}: ${JSON.stringify(body)}`);
      printJson(body);
    });

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
