import { spawn, type ChildProcess } from 'node:child_process';
import type { Logger } from '../log.js';

export interface Backoff {
  minMs: number;
  maxMs: number;
  /** Up this long, a process counts as healthy again and the next crash restarts it after minMs. */
  stableMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { minMs: 500, maxMs: 30_000, stableMs: 10_000 };

export type ProcessState = 'running' | 'backoff' | 'stopped';

export interface ProcessStatus {
  state: ProcessState;
  pid: number | null;
  /** Restarts after a crash (not the deliberate ones after a config change). */
  restarts: number;
  started_at: string | null;
}

export interface SupervisorHooks {
  onStart(pid: number): void;
  onCrash(): void;
}

const STOP_GRACE_MS = 3000;

/**
 * One long-running child, restarted with exponential backoff when it dies on its own. It runs
 * in a process group of its own, and stopping signals the whole group, so nothing it forked
 * survives it.
 */
export class SupervisedProcess {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private delayMs: number;
  private startedAt = 0;
  private wanted = false;
  private restarts = 0;
  private tail: string[] = [];

  constructor(
    private readonly bin: string,
    private readonly args: string[],
    private readonly log: Logger,
    private readonly hooks: SupervisorHooks,
    private readonly backoff: Backoff = DEFAULT_BACKOFF,
  ) {
    this.delayMs = backoff.minMs;
  }

  start(): void {
    this.wanted = true;
    if (!this.child && !this.timer) this.spawn();
  }

  /** A deliberate restart (new config): at once, and without counting as a crash. */
  async restart(): Promise<void> {
    await this.stop();
    this.delayMs = this.backoff.minMs;
    this.start();
  }

  async stop(): Promise<void> {
    this.wanted = false;
    clearTimeout(this.timer);
    this.timer = undefined;
    const child = this.child;
    if (!child?.pid) return;
    signalGroup(child.pid, 'SIGTERM');
    const force = setTimeout(() => signalGroup(child.pid!, 'SIGKILL'), STOP_GRACE_MS);
    await this.exited;
    clearTimeout(force);
    // The leader is gone; anything it forked and left behind goes too.
    signalGroup(child.pid, 'SIGKILL');
  }

  status(): ProcessStatus {
    return {
      state: this.child ? 'running' : this.timer ? 'backoff' : 'stopped',
      pid: this.child?.pid ?? null,
      restarts: this.restarts,
      started_at: this.child ? new Date(this.startedAt).toISOString() : null,
    };
  }

  private spawn(): void {
    this.timer = undefined;
    const child = spawn(this.bin, this.args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.startedAt = Date.now();
    this.tail = [];
    const keep = (b: Buffer): void => {
      this.tail.push(...b.toString('utf8').split('\n').filter(Boolean));
      if (this.tail.length > 20) this.tail.splice(0, this.tail.length - 20);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.exited = new Promise((resolve) => {
      child.once('error', (err: NodeJS.ErrnoException) => {
        this.log.warn({ bin: this.bin, err: err.message }, `cannot start ${this.bin}; set NEBULAGC_NEBULA_BIN to the nebula binary`);
        this.onExit(child, null, null);
        resolve();
      });
      child.once('exit', (code, signal) => {
        this.onExit(child, code, signal);
        resolve();
      });
    });
    if (child.pid) {
      this.log.info({ pid: child.pid, bin: this.bin, args: this.args }, 'lighthouse process started');
      this.hooks.onStart(child.pid);
    }
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.child !== child) return;
    this.child = undefined;
    if (!this.wanted) {
      this.log.info({ pid: child.pid, code, signal }, 'lighthouse process stopped');
      return;
    }
    const upMs = Date.now() - this.startedAt;
    if (upMs >= this.backoff.stableMs) this.delayMs = this.backoff.minMs;
    this.restarts++;
    this.hooks.onCrash();
    this.log.error({ pid: child.pid ?? null, code, signal, up_ms: upMs, restart_in_ms: this.delayMs, output: this.tail.slice(-5) }, 'lighthouse process exited; restarting');
    this.timer = setTimeout(() => this.spawn(), this.delayMs);
    this.delayMs = Math.min(this.delayMs * 2, this.backoff.maxMs);
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is already gone.
  }
}
