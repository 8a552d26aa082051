import { Command } from 'commander';
import { loadConfig } from '../config.js';
import { listQuarantine, showQuarantine } from '../ha/quarantine.js';
import { printJson } from './common.js';

const dbOf = (f: { db?: string }): string => f.db ?? loadConfig(process.env).dbPath;

/**
 * Reads the diverged copies an old master kept before it resynced. Read-only, and it never opens
 * the store: the entries live beside the database, and the server may be running on it.
 */
export function quarantineCommands(): Command[] {
  const quarantine = new Command('quarantine').description('diverged database copies an HA node kept before resyncing from a new master');
  quarantine
    .command('list')
    .description('the kept copies, newest first, with their positions and how many rows differ')
    .option('--db <path>', 'database file (env NEBULAGC_DB_PATH)')
    .action((f: { db?: string }) => printJson({ entries: listQuarantine(dbOf(f)) }));
  quarantine
    .command('show')
    .description('one kept copy: its details and every row that differs from the master’s copy')
    .argument('<id>', 'the entry’s id, as `quarantine list` shows it')
    .option('--db <path>', 'database file (env NEBULAGC_DB_PATH)')
    .action((id: string, f: { db?: string }) => printJson(showQuarantine(dbOf(f), id)));
  return [quarantine];
}
