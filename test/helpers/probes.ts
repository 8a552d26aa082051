import Database from 'better-sqlite3';
import type { ServerProcess } from './cluster.js';
import { call } from './server.js';

/** A node's GET /health body. */
export const health = async (n: ServerProcess): Promise<any> => (await call(n.url, 'GET', '/health')).body;

export const isMaster = async (n: ServerProcess): Promise<boolean> => (await call(n.url, 'GET', '/health/master')).status === 200;

/** The value of the first /metrics line matching `line`; NaN when none does. */
export async function metric(n: ServerProcess, line: RegExp): Promise<number> {
  const text = (await call(n.url, 'GET', '/metrics')).body.toString() as string;
  const m = text.split('\n').find((l) => line.test(l));
  return m ? Number(m.split(' ').pop()) : NaN;
}

/** Every tenant name in a node's database file, read directly (not through its API). */
export function tenantNames(n: ServerProcess): Set<string> {
  const db = new Database(n.dbPath, { readonly: true });
  try {
    return new Set((db.prepare('SELECT name FROM tenants').all() as { name: string }[]).map((r) => r.name));
  } finally {
    db.close();
  }
}
