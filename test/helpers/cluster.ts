import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TEST_ADMIN_TOKEN, TEST_SECRET } from './server.js';

export const REPLICATION_SECRET = 'test-replication-secret-0123456789abcdef';
const MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../server/src/cli/main.js');

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

export interface ServerProcess {
  name: string;
  url: string;
  port: number;
  dir: string;
  dbPath: string;
  env: Record<string, string>;
  child: ChildProcess;
  /** Everything the process wrote, for failure messages. */
  output(): string;
  /** SIGKILL: no cleanup at all, as a crash. */
  kill9(): Promise<void>;
  /**
   * SIGTERM (the planned stop: a master with a caught-up replica hands over first) and wait for
   * exit. SIGINT stops at once, without a handover.
   */
  stop(signal?: 'SIGTERM' | 'SIGINT'): Promise<void>;
  /** Starts the same node again (same dir, port and env). */
  restart(): Promise<ServerProcess>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** A temp dir for a test's nodes; `remove()` deletes it. */
export function clusterDir(label: string): { root: string; remove(): void } {
  const root = mkdtempSync(path.join(os.tmpdir(), `nebulagc-${label}-`));
  return { root, remove: () => rmSync(root, { recursive: true, force: true }) };
}

/**
 * Starts the built server as its own process on 127.0.0.1, and waits for /health/live.
 * `env` adds to (and overrides) the defaults; NEBULAGC_* of the calling shell are dropped.
 */
export async function startNode(
  name: string,
  root: string,
  env: Record<string, string> = {},
  port?: number,
  scheme: 'http' | 'https' = 'http',
): Promise<ServerProcess> {
  const p = port ?? (await freePort());
  const dir = path.join(root, name);
  mkdirSync(dir, { recursive: true });
  const dbPath = path.join(dir, 'nebulagc.db');
  const fullEnv: Record<string, string> = {
    NEBULAGC_LISTEN: `127.0.0.1:${p}`,
    NEBULAGC_ADVERTISE_URL: `${scheme}://127.0.0.1:${p}`,
    NEBULAGC_DB_PATH: dbPath,
    NEBULAGC_HMAC_SECRET: TEST_SECRET,
    NEBULAGC_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    NEBULAGC_REPLICATION_SECRET: REPLICATION_SECRET,
    NEBULAGC_NODE_ID: name,
    NEBULAGC_LOG_LEVEL: 'info',
    NEBULAGC_RATE_LIMIT_IP_BURST: '1000000',
    NEBULAGC_RATE_LIMIT_NODE_BURST: '1000000',
    NEBULAGC_RATE_LIMIT_CLUSTER_BURST: '1000000',
    ...env,
  };
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const child = spawn(process.execPath, [MAIN, 'serve'], { env: { ...inherited, ...fullEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let out = '';
  const keep = (b: Buffer): void => {
    out = (out + b.toString()).slice(-200_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      live.delete(child);
      resolve();
    }),
  );
  const url = `${scheme}://127.0.0.1:${p}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited during start:\n${out}`);
    // Liveness is checked on the port: a TLS node's certificate is the test's business.
    if (await portOpen(p)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${name} did not come up:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const node: ServerProcess = {
    name,
    url,
    port: p,
    dir,
    dbPath,
    env,
    child,
    output: () => out,
    async kill9() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }
    },
    restart: () => startNode(name, root, env, p, scheme),
  };
  return node;
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Polls `check` until it returns true or `timeoutMs` passes; returns whether it did. */
export async function waitUntil(check: () => Promise<boolean> | boolean, timeoutMs = 15_000, everyMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return true;
    } catch {
      // Try again until the deadline.
    }
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
