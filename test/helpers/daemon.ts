import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import type { ClusterStatus, StatusFile } from '../../daemon/src/status.js';
import { waitUntil } from './cluster.js';
import { NODE_TOKEN } from './fake-control-plane.js';

export const DAEMON_MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../daemon/src/cli/main.js');

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export interface DaemonProcess {
  dir: string;
  configFile: string;
  stateDir: string;
  configDir: string;
  statusFile: string;
  child: ChildProcess;
  output(): string;
  status(): ClusterStatus | null;
  /** The path nebula's `current` link points at. */
  activeRelease(): string | null;
  /** SIGTERM, then wait for the daemon to exit; returns its exit code. */
  stop(): Promise<number | null>;
  cleanup(): Promise<void>;
}

/**
 * Writes a daemon.yml for one cluster (fast backoffs, short blocking waits) and runs the built
 * `nebulagc daemon` as its own process. `overrides` merge over the top level of the file.
 */
export function startDaemon(servers: string[], overrides: Record<string, unknown> = {}, cluster: Record<string, unknown> = {}): DaemonProcess {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-daemon-'));
  const stateDir = path.join(dir, 'state');
  const configDir = path.join(dir, 'nebula');
  const statusFile = path.join(dir, 'status.json');
  const config = {
    log_level: 'debug',
    status_file: statusFile,
    poll: { wait_seconds: 2, interval_seconds: 0.5, heartbeat_interval_seconds: 0.2, request_timeout_seconds: 2 },
    server_backoff: { initial_ms: 200, max_ms: 1000 },
    restart_backoff: { initial_ms: 500, max_ms: 4000, reset_after_ms: 60000 },
    clusters: [{ name: 'test', servers, node_token: NODE_TOKEN, state_dir: stateDir, config_dir: configDir, ...cluster }],
    ...overrides,
  };
  const configFile = path.join(dir, 'daemon.yml');
  writeFileSync(configFile, YAML.stringify(config));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const child = spawn(process.execPath, [DAEMON_MAIN, 'daemon', '--config', configFile], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const d: DaemonProcess = {
    dir,
    configFile,
    stateDir,
    configDir,
    statusFile,
    child,
    output: () => output,
    status: () => {
      try {
        return (JSON.parse(readFileSync(statusFile, 'utf8')) as StatusFile).clusters[0] ?? null;
      } catch {
        return null;
      }
    },
    activeRelease: () => {
      try {
        return readlinkSync(path.join(configDir, 'current'));
      } catch {
        return null;
      }
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const code = await exited;
      live.delete(child);
      return code;
    },
    cleanup: async () => {
      const pid = d.status()?.nebula_pid;
      await d.stop();
      if (pid && processAlive(pid)) process.kill(pid, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return d;
}

/** A live process, not a zombie waiting to be reaped. */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

export const cmdline = (pid: number): string[] => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);

/** Waits for the daemon's status to satisfy `check`; fails with the daemon's output. */
export async function waitForStatus(d: DaemonProcess, check: (s: ClusterStatus) => boolean, what: string, timeoutMs = 15_000): Promise<ClusterStatus> {
  const ok = await waitUntil(() => {
    const s = d.status();
    return s !== null && check(s);
  }, timeoutMs);
  if (!ok) throw new Error(`timed out waiting for: ${what}\nstatus: ${JSON.stringify(d.status())}\n--- daemon output (tail) ---\n${d.output().slice(-4000)}`);
  return d.status()!;
}

