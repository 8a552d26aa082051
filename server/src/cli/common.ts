import { Command, Option } from 'commander';
import { loadConfig, type Config, type Env } from '../config.js';
import { openStore, type OpenedStore } from '../db/open-store.js';
import { resolveHmacSecret } from '../secrets.js';

/** Options shared by the commands that open the database directly. */
export interface DbFlags {
  db?: string;
  dev?: boolean;
}

export const dbOption = (): Option => new Option('--db <path>', 'database file (env NEBULAGC_DB_PATH)');
export const devOption = (): Option =>
  new Option('--dev', 'dev mode: without NEBULAGC_HMAC_SECRET, use a generated secret kept next to the database');

export function configFrom(flags: DbFlags, extra: Partial<Record<keyof Env, string>> = {}): Config {
  const overrides: Partial<Record<keyof Env, string>> = { ...extra };
  if (flags.db) overrides.NEBULAGC_DB_PATH = flags.db;
  if (flags.dev) overrides.NEBULAGC_DEV = 'true';
  return loadConfig(process.env, overrides);
}

/** Runs `fn` against an opened store and closes it once `fn` (and its promise) has settled. */
export async function withStore<T>(flags: DbFlags, fn: (opened: OpenedStore, config: Config) => T | Promise<T>): Promise<T> {
  const config = configFrom(flags);
  const { secret } = resolveHmacSecret(config);
  const opened = openStore({ dbPath: config.dbPath, synchronous: config.synchronous, secret });
  try {
    return await fn(opened, config);
  } finally {
    opened.close();
  }
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export const withDbOptions = (cmd: Command): Command => cmd.addOption(dbOption()).addOption(devOption());

export function intArg(name: string): (v: string) => number {
  return (v) => {
    if (!/^\d+$/.test(v)) throw new Error(`${name} must be a whole number, got "${v}"`);
    return Number(v);
  };
}
