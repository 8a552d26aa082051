import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { BackupConfig } from '../config.js';
import type { Logger } from '../log.js';
import { litestreamBin, writeLitestreamConfig } from './litestream-config.js';
import { parseLitestreamLine } from './litestream-log.js';

/** Litestream's log messages for a finished upload (v0.3.13, replica.go). */
const UPLOADED = new Set(['wal segment written', 'snapshot written']);
const RESTART_MIN_MS = 500;
const RESTART_MAX_MS = 30_000;
/** Up this long, a run counts as healthy and the restart delay starts over. */
const STABLE_MS = 10_000;
const STOP_GRACE_MS = 5000;
/** setpriv (util-linux) makes the kernel send litestream SIGTERM if this process dies, even by kill -9. */
const SETPRIV = '/usr/bin/setpriv';

export interface BackupStatus {
  enabled: true;
  /** Whether this node should be uploading now: it is the master. */
  active: boolean;
  running: boolean;
  last_success_at: string | null;
  errors: number;
  last_error: string | null;
}

/**
 * Runs `litestream replicate` for this node's database while it is the master, and only then:
 * start() on taking writes, stop() (awaited) before it takes any as a replica. Restarts it with
 * backoff when it exits on its own, and reads its JSON log lines into ours (tagged
 * `component: litestream`), counting uploads and errors for /health and /metrics. Writes never
 * wait for it: it is another process.
 */
export class LitestreamSupervisor {
  private child: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  private wanted = false;
  private restartTimer: NodeJS.Timeout | undefined;
  private delayMs = RESTART_MIN_MS;
  private lastSuccessAt: number | undefined;
  private lastError: string | undefined;
  errors = 0;

  constructor(
    private readonly o: { backup: BackupConfig; dbPath: string; configFile: string; log: Logger },
  ) {}

  get running(): boolean {
    return this.child !== undefined;
  }

  /** Unix seconds of the last finished upload, 0 before the first. */
  get lastSuccessSeconds(): number {
    return this.lastSuccessAt === undefined ? 0 : this.lastSuccessAt / 1000;
  }

  status(): BackupStatus {
    return {
      enabled: true,
      active: this.wanted,
      running: this.running,
      last_success_at: this.lastSuccessAt === undefined ? null : new Date(this.lastSuccessAt).toISOString(),
      errors: this.errors,
      last_error: this.lastError ?? null,
    };
  }

  start(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.delayMs = RESTART_MIN_MS;
    this.spawn();
  }

  /** Stops uploading; resolves once litestream has exited. */
  async stop(): Promise<void> {
    this.wanted = false;
    clearTimeout(this.restartTimer);
    const child = this.child;
    const exited = this.exited;
    if (!child || !exited) return;
    signalGroup(child, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(child, 'SIGKILL'), STOP_GRACE_MS);
    await exited;
    clearTimeout(timer);
  }

  private spawn(): void {
    const { backup, dbPath, configFile, log } = this.o;
    try {
      writeLitestreamConfig(configFile, dbPath, backup);
    } catch (err) {
      this.failed(`could not write ${configFile}: ${(err as Error).message}`);
      return;
    }
    const bin = litestreamBin(backup);
    // Our config is final: Litestream would otherwise expand a `$` in a key or a path.
    const args = ['replicate', '-config', configFile, '-no-expand-env'];
    const [cmd, argv] = existsSync(SETPRIV) ? [SETPRIV, ['--pdeathsig', 'TERM', '--', bin, ...args]] : [bin, args];
    const startedAt = Date.now();
    // Its own process group, so a stop reaches it through setpriv's exec as well.
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.child = child;
    log.info({ component: 'litestream', pid: child.pid, url: backup.url }, 'litestream started');
    for (const stream of [child.stdout!, child.stderr!]) createInterface({ input: stream }).on('line', (line) => this.line(line));
    this.exited = new Promise((resolve) => {
      child.once('error', (err) => {
        this.failed(`could not run ${bin}: ${err.message}`);
      });
      child.once('close', (code, signal) => {
        this.child = undefined;
        if (Date.now() - startedAt >= STABLE_MS) this.delayMs = RESTART_MIN_MS;
        if (this.wanted) {
          this.failed(`litestream exited (${signal ?? `code ${code}`}); restarting in ${this.delayMs} ms`);
          this.restartTimer = setTimeout(() => this.wanted && this.spawn(), this.delayMs);
          this.delayMs = Math.min(this.delayMs * 2, RESTART_MAX_MS);
        } else log.info({ component: 'litestream', code, signal }, 'litestream stopped');
        resolve();
      });
    });
  }

  private line(line: string): void {
    const log = this.o.log;
    const entry = parseLitestreamLine(line);
    if (!entry) {
      log.warn({ component: 'litestream' }, line);
      return;
    }
    const { level, msg, error, fields } = entry;
    if (level === 'ERROR') {
      this.failed(error ? `${msg}: ${error}` : msg, fields);
      return;
    }
    if (UPLOADED.has(msg)) this.lastSuccessAt = Date.now();
    (level === 'WARN' ? log.warn : level === 'DEBUG' ? log.debug : log.info).call(log, { component: 'litestream', ...fields }, msg);
  }

  private failed(message: string, fields: Record<string, unknown> = {}): void {
    this.errors += 1;
    this.lastError = message;
    this.o.log.error({ component: 'litestream', ...fields }, message);
  }
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch {
    child.kill(signal);
  }
}
