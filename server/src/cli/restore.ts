import { Command, Option } from 'commander';
import { parseLitestreamLine } from '../backup/litestream-log.js';
import { isRfc3339, restoreBackup, type RestoreResult } from '../backup/restore.js';
import { configFrom, printJson } from './common.js';

/** Litestream's fields worth a progress line; the rest (db, replica, paths) are the same on every line. */
const PROGRESS_FIELDS = ['generation', 'index', 'index_min', 'index_max', 'elapsed'];

/** `restore`: a new database file from the Litestream backup at NEBULAGC_LITESTREAM_URL. */
export function restoreCommand(): Command {
  return new Command('restore')
    .description(
      'restore the database from the backup at NEBULAGC_LITESTREAM_URL into a new file, check it (integrity_check) and print its checksum and position',
    )
    .requiredOption('--output <path>', 'the file to restore into; it must not exist')
    .option('--timestamp <time>', 'restore what had been uploaded at this time (RFC 3339, e.g. 2026-01-02T15:04:05Z) instead of the latest', timestampArg)
    .addOption(new Option('--db <path>', 'the database the backup was taken of (env NEBULAGC_DB_PATH); it only names it in the Litestream config'))
    .action(async (f: { output: string; timestamp?: string; db?: string }) => {
      const config = configFrom({ db: f.db });
      if (!config.backup) throw new Error('NEBULAGC_LITESTREAM_URL is not set: it names the backup to restore from (s3://bucket/path or file:///dir)');
      process.stderr.write(`restoring ${config.dbPath} from ${config.backup.url}${f.timestamp ? ` as of ${f.timestamp}` : ''} into ${f.output}\n`);
      const result = await restoreBackup({
        backup: config.backup,
        dbPath: config.dbPath,
        output: f.output,
        ...(f.timestamp ? { timestamp: f.timestamp } : {}),
        onLine: progress,
      });
      printJson(snakeCase(result));
    });
}

function timestampArg(value: string): string {
  if (!isRfc3339(value)) throw new Error(`--timestamp must be RFC 3339 (e.g. 2026-01-02T15:04:05Z or 2026-01-02T17:04:05.5+02:00), got "${value}"`);
  return value;
}

/** Litestream's progress on stderr, one line each; its errors end up in the command's own. */
function progress(line: string): void {
  const parsed = parseLitestreamLine(line);
  if (!parsed) {
    process.stderr.write(`litestream: ${line}\n`);
    return;
  }
  if (parsed.level === 'ERROR') return;
  const fields = PROGRESS_FIELDS.filter((k) => parsed.fields[k] !== undefined).map((k) => ` ${k}=${String(parsed.fields[k])}`);
  process.stderr.write(`litestream: ${parsed.msg}${fields.join('')}\n`);
}

/** The CLI prints snake_case, as the API and `db checksum` do. */
function snakeCase(result: RestoreResult): Record<string, unknown> {
  return Object.fromEntries(Object.entries(result).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), v]));
}
