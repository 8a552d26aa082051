import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, waitUntil, type ServerProcess } from './cluster.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const HAPROXY_CFG = path.join(REPO, 'haproxy/haproxy.cfg');
/** The node addresses the shipped config names, in order (n1, n2, n3). */
const SHIPPED_ADDRESSES = ['10.0.0.11:8080', '10.0.0.12:8080', '10.0.0.13:8080'];

export interface StatRow {
  backend: string;
  server: string;
  status: string;
  /** Sessions served so far. */
  sessions: number;
}

export interface Haproxy {
  url: string;
  stats(): Promise<StatRow[]>;
  /** The servers of `backend` whose status is UP. */
  up(backend: string): Promise<string[]>;
  output(): string;
  stop(): Promise<void>;
}

/**
 * The shipped haproxy/haproxy.cfg with only the addresses changed: its three nodes become
 * `nodes` (host:port), the frontend and the stats page listen on the given ports of 127.0.0.1.
 * Everything else (checks, retries, timeouts, routing) is what users copy.
 */
export function renderHaproxyConfig(nodes: string[], frontPort: number, statsPort: number): string {
  let cfg = readFileSync(HAPROXY_CFG, 'utf8');
  SHIPPED_ADDRESSES.forEach((addr, i) => {
    if (!cfg.includes(addr)) throw new Error(`haproxy.cfg no longer names ${addr}`);
    cfg = cfg.replaceAll(addr, nodes[i]!);
  });
  const replace = (from: string, to: string): void => {
    if (!cfg.includes(from)) throw new Error(`haproxy.cfg has no "${from}"`);
    cfg = cfg.replace(from, to);
  };
  replace('bind :8080', `bind 127.0.0.1:${frontPort}`);
  replace('bind 127.0.0.1:8404', `bind 127.0.0.1:${statsPort}`);
  return cfg;
}

/** Runs the real haproxy in the foreground on the rendered config; resolves once the frontend accepts connections. */
export async function startHaproxy(nodeUrls: string[]): Promise<Haproxy> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-haproxy-'));
  const [front, stats] = [await freePort(), await freePort()];
  const file = path.join(dir, 'haproxy.cfg');
  writeFileSync(file, renderHaproxyConfig(nodeUrls.map((u) => new URL(u).host), front, stats));
  let out = '';
  const child: ChildProcess = spawn('haproxy', ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-200_000)));
  child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-200_000)));
  const statsUrl = `http://127.0.0.1:${stats}/;csv`;
  const proxy: Haproxy = {
    url: `http://127.0.0.1:${front}`,
    async stats() {
      const text = await (await fetch(statsUrl)).text();
      const [header, ...lines] = text.trim().split('\n');
      const cols = header!.replace(/^# /, '').split(',');
      const at = (name: string): number => cols.indexOf(name);
      return lines.map((l) => {
        const f = l.split(',');
        return { backend: f[at('pxname')]!, server: f[at('svname')]!, status: f[at('status')]!, sessions: Number(f[at('stot')]) };
      });
    },
    async up(backend) {
      return (await proxy.stats()).filter((r) => r.backend === backend && r.status.startsWith('UP') && r.server !== 'BACKEND').map((r) => r.server);
    },
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const up = await waitUntil(async () => (await fetch(statsUrl).catch(() => undefined))?.ok === true, 10_000, 100);
  if (!up) {
    await proxy.stop();
    throw new Error(`haproxy did not start:\n${out}`);
  }
  return proxy;
}

/** The server name the shipped config gives a node, by its place in `members` (keep a restarted node in its old place). */
export const serverName = (members: ServerProcess[], n: ServerProcess): string => `n${members.indexOf(n) + 1}`;

/** True once the write backend has exactly `n` up among its primary servers (the "-hold" backups aside). */
export async function haproxyWritesTo(hap: Haproxy, members: ServerProcess[], n: ServerProcess): Promise<boolean> {
  const up = (await hap.up('nebulagc_write')).filter((s) => !s.endsWith('-hold'));
  return up.length === 1 && up[0] === serverName(members, n);
}
