import { stmt } from '../db/connection.js';
import { newId, type Store } from './store.js';
import { generateToken, hashToken } from './tokens.js';

export type BootstrapResult =
  | { status: 'existing'; envTokenIgnored: boolean }
  | { status: 'created'; token: string; source: 'env' | 'generated' };

/**
 * Makes sure an operator token exists. NEBULAGC_ADMIN_TOKEN seeds it only on a database that
 * has none, so a rotated token is not silently brought back by a restart.
 */
export function bootstrapOperatorToken(store: Store, envToken: string | undefined): BootstrapResult {
  return store.writer.write('operator.bootstrap', (db) => {
    const rows = stmt(db, 'SELECT token_hash FROM operator_tokens').all() as { token_hash: string }[];
    if (rows.length > 0) {
      const envHash = envToken ? hashToken(store.secret, envToken) : undefined;
      return { status: 'existing', envTokenIgnored: envHash !== undefined && !rows.some((r) => r.token_hash === envHash) };
    }
    const token = envToken ?? generateToken('op');
    stmt(db, 'INSERT INTO operator_tokens (id, token_hash, created_at) VALUES (?, ?, ?)').run(
      newId(),
      hashToken(store.secret, token),
      store.now(),
    );
    return { status: 'created', token, source: envToken ? 'env' : 'generated' };
  });
}

/** Replaces every operator token with a new one, returned once. */
export function rotateOperatorToken(store: Store): string {
  const token = generateToken('op');
  store.writer.write('operator.rotate-token', (db) => {
    stmt(db, 'DELETE FROM operator_tokens').run();
    stmt(db, 'INSERT INTO operator_tokens (id, token_hash, created_at) VALUES (?, ?, ?)').run(
      newId(),
      hashToken(store.secret, token),
      store.now(),
    );
  });
  return token;
}
