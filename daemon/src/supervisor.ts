import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Backoff } from './backoff.js';
import type { Logger } from './log.js';

export interface SupervisorOptions {
  command: string[];
  configFile: string;
  /** Where the running nebula's pid is kept, to find a nebula left behind by a killed daemon. */
  pidFile: string;
  backoff: { initialMs: number; maxMs: number; resetAfterMs: number };
  log: Logger;
  onChange: () => void;
}

const STOP_GRACE_MS = 5000;
const running = new Set<ChildProcess>();

// The last line of defence against orphans: whatever way the daemon exits (an uncaught error
// included), every nebula process group it started gets SIGKILL. A SIGKILL of the daemon
// itself skips this; systemd's KillMode=control-group covers that case.
process.once('exit', () => {
  for (const child of running) killGroup(child, 'SIGKILL');
});

/** True while `pid` is a live process whose command line names `configFile`. */
function runsConfig(pid: number, configFile: string): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return false;
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(configFile);
  } catch {
    return false;
  }
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    child.kill(signal);
  }
}

/**
 * Runs nebula (or its wrapper) as a child in a process group of its own, so stopping it stops
 * whatever the wrapper started as well. A crash is followed by a restart after an exponential
 * backoff that resets once nebula has stayed up for `resetAfterMs`.
 */
export class Supervisor {
  private child: ChildProcess | null = null;
  private startedAt = 0;
  private wanted = false;
  private restartTimer: NodeJS.Timeout | null = null;
  private readonly backoff: Backoff;
  restarts = 0;
  lastExit: string | null = null;

  constructor(private readonly opts: SupervisorOptions) {
    this.backoff = new Backoff(opts.backoff.initialMs, opts.backoff.maxMs);
  }

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  get startedAtMs(): number | null {
    return this.child ? this.startedAt : null;
  }

  /**
   * A daemon killed with SIGKILL outside systemd leaves its nebula running; the next daemon on the
   * same config dir stops that process group before starting its own. The pid is trusted only
   * if the process is still a nebula on this config file, so a reused pid is left alone.
   */
  async stopLeftover(): Promise<void> {
    let pid: number;
    try {
      pid = Number(readFileSync(this.opts.pidFile, 'utf8').trim());
    } catch {
      return;
    }
    if (Number.isInteger(pid) && pid > 1 && runsConfig(pid, this.opts.configFile)) {
      this.opts.log.warn({ pid }, 'stopping a nebula left behind by an earlier daemon');
      for (const [signal, waitMs] of [['SIGTERM', STOP_GRACE_MS], ['SIGKILL', 1000]] as const) {
        try {
          process.kill(-pid, signal);
        } catch {
          break;
        }
        const deadline = Date.now() + waitMs;
        while (runsConfig(pid, this.opts.configFile) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        if (!runsConfig(pid, this.opts.configFile)) break;
      }
    }
    rmSync(this.opts.pidFile, { force: true });
  }

  start(): void {
    this.wanted = true;
    if (this.child || this.restartTimer) return;
    this.spawn();
  }

  /** Stops nebula and starts it again at once: how a new config is taken up. */
  async restart(): Promise<void> {
    await this.stop();
    this.start();
  }

  async stop(): Promise<void> {
    this.wanted = false;
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
    }
    const child = this.child;
    if (!child) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    killGroup(child, 'SIGTERM');
    const timer = setTimeout(() => killGroup(child, 'SIGKILL'), STOP_GRACE_MS);
    await exited;
    clearTimeout(timer);
  }

  private spawn(): void {
    const [bin, ...wrapperArgs] = this.opts.command;
    // nebula writes its own text logs; they go to the daemon's stderr, next to the daemon's JSON lines.
    const child = spawn(bin!, [...wrapperArgs, '-config', this.opts.configFile], { detached: true, stdio: ['ignore', 2, 2] });
    this.child = child;
    this.startedAt = Date.now();
    running.add(child);
    if (child.pid !== undefined) writeFileSync(this.opts.pidFile, `${child.pid}\n`);
    let ended = false;
    const finish = (exit: string): void => {
      if (ended) return;
      ended = true;
      this.exited(child, exit);
    };
    child.once('error', (err) => {
      this.opts.log.error({ err: err.message }, 'cannot start nebula');
      if (child.pid === undefined) finish(`spawn failed: ${err.message}`);
    });
    child.once('exit', (code, signal) => finish(signal ? `signal ${signal}` : `exit code ${code}`));
    this.opts.log.info({ pid: child.pid, config: this.opts.configFile }, 'nebula started');
    this.opts.onChange();
  }

  private exited(child: ChildProcess, exit: string): void {
    running.delete(child);
    if (child.pid !== undefined) {
      // A wrapper may have left its own children behind in the group.
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // The group is already empty.
      }
    }
    this.child = null;
    this.lastExit = exit;
    rmSync(this.opts.pidFile, { force: true });
    this.opts.onChange();
    if (!this.wanted) return;
    if (Date.now() - this.startedAt >= this.opts.backoff.resetAfterMs) this.backoff.reset();
    const delay = this.backoff.fail();
    this.opts.log.warn({ pid: child.pid, exit, restart_in_ms: Math.round(delay) }, 'nebula exited; restarting');
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (!this.wanted) return;
      this.restarts++;
      this.spawn();
    }, delay);
  }
}
