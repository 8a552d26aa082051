import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig, type Env } from '../../server/src/config.js';
import { createLogger } from '../../server/src/log.js';
import { startServer, type RunningServer } from '../../server/src/server.js';

export const TEST_SECRET = 'test-hmac-secret-0123456789abcdef0123456789abcdef';
export const TEST_ADMIN_TOKEN = 'test-admin-token-0123456789abcdef0123456789abcdef';

export interface TestServer {
  url: string;
  dir: string;
  dbPath: string;
  server: RunningServer;
  /** Operator headers. */
  op: Record<string, string>;
  stop(): Promise<void>;
}

/** A real server on an ephemeral 127.0.0.1 port with a real SQLite file in a temp dir. */
export async function startTestServer(env: Partial<Record<keyof Env, string>> = {}): Promise<TestServer> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-test-'));
  const dbPath = path.join(dir, 'nebulagc.db');
  const config = loadConfig(
    {},
    {
      NEBULAGC_LISTEN: '127.0.0.1:0',
      NEBULAGC_DB_PATH: dbPath,
      NEBULAGC_HMAC_SECRET: TEST_SECRET,
      NEBULAGC_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      NEBULAGC_LOG_LEVEL: 'silent',
      NEBULAGC_DB_SYNCHRONOUS: 'NORMAL',
      // Functional tests make bursts of calls with one token; the limit tests set their own.
      NEBULAGC_RATE_LIMIT_IP_BURST: '100000',
      NEBULAGC_RATE_LIMIT_NODE_BURST: '100000',
      NEBULAGC_RATE_LIMIT_CLUSTER_BURST: '100000',
      ...env,
    },
  );
  const server = await startServer(config, createLogger(config.logLevel));
  return {
    url: server.url,
    dir,
    dbPath,
    server,
    op: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` },
    async stop() {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Reply<T = any> {
  status: number;
  headers: Headers;
  body: T;
}

/** fetch with a JSON body and a parsed JSON (or raw) answer. */
export async function call<T = any>(
  base: string,
  method: string,
  url: string,
  opts: { headers?: Record<string, string>; json?: unknown; raw?: Uint8Array; contentType?: string } = {},
): Promise<Reply<T>> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  let body: BodyInit | undefined;
  if (opts.json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(opts.json);
  } else if (opts.raw !== undefined) {
    headers['content-type'] = opts.contentType ?? 'application/gzip';
    body = new Uint8Array(opts.raw);
  }
  const res = await fetch(base + url, { method, headers, body, redirect: 'manual' });
  const type = res.headers.get('content-type') ?? '';
  const parsed = type.includes('json') ? await res.json() : Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, body: parsed as T };
}
