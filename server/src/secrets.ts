import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, type Config } from './config.js';

/**
 * The HMAC secret keys every stored token hash and the CA-key encryption. In production it
 * must come from NEBULAGC_HMAC_SECRET. Dev mode keeps a generated one next to the database so
 * that tokens survive a restart of a local trial server.
 */
export function resolveHmacSecret(config: Config): { secret: string; source: 'env' | 'dev-file' } {
  if (config.hmacSecret) return { secret: config.hmacSecret, source: 'env' };
  if (!config.dev) {
    throw new ConfigError(
      'NEBULAGC_HMAC_SECRET is required (32+ random characters, e.g. `openssl rand -hex 32`); for a local trial run with --dev',
    );
  }
  const file = path.join(path.dirname(path.resolve(config.dbPath)), 'hmac-secret');
  if (existsSync(file)) {
    const secret = readFileSync(file, 'utf8').trim();
    if (secret.length < 32) throw new ConfigError(`${file} holds a secret shorter than 32 characters; delete it or fix it`);
    return { secret, source: 'dev-file' };
  }
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, randomBytes(32).toString('hex'), { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return { secret: readFileSync(file, 'utf8').trim(), source: 'dev-file' };
}
