import type { Logger } from '../log.js';

/**
 * Every state a node can be in. The part before the dot is its role, which is what `/health`
 * reports as `ha_mode`; `demoting` and `promoting` are the moments between two roles, when the
 * node takes no writes and serves no stream.
 */
export const HA_STATES = [
  'starting',
  'standalone',
  'replica.bootstrapping',
  'replica.recovering',
  'replica.following',
  'replica.broken',
  'promoting',
  'master.serving',
  'master.fenced',
  'demoting',
  'stopped',
] as const;

export type HaState = (typeof HA_STATES)[number];

/** Allowed transitions, and what each means. Anything else is a bug, and throws. */
export const TRANSITIONS: Record<HaState, Partial<Record<HaState, string>>> = {
  starting: {
    standalone: 'started without replication',
    'master.serving': 'started as master',
    'replica.bootstrapping': 'started as a replica without a copy',
    'replica.recovering': 'started as a replica; replaying after a crash',
    'replica.following': 'started as a replica with a verified copy',
    stopped: 'start failed',
  },
  standalone: { stopped: 'shutdown' },
  'replica.bootstrapping': {
    'replica.following': 'a snapshot was installed',
    'replica.broken': 'the snapshot could not be installed',
    promoting: 'promote (forced: no copy yet)',
    stopped: 'shutdown',
  },
  'replica.recovering': {
    'replica.following': 'the copy’s checksum met the master’s again',
    'replica.broken': 'the copy matched no checksum of the master’s',
    'replica.bootstrapping': 'the copy was closed to take a snapshot',
    promoting: 'promote',
    stopped: 'shutdown',
  },
  'replica.following': {
    'replica.broken': 'a record did not fit the copy, or the copy is off the master’s history',
    'replica.bootstrapping': 'the copy was closed to take a snapshot',
    promoting: 'promote',
    stopped: 'shutdown',
  },
  'replica.broken': {
    'replica.following': 'a snapshot was installed',
    'replica.bootstrapping': 'the copy was closed to take a snapshot',
    promoting: 'promote (forced)',
    stopped: 'shutdown',
  },
  promoting: {
    'master.serving': 'the writer is open on a new epoch',
    'replica.following': 'promotion failed; following again',
    'replica.recovering': 'promotion failed; following again, replaying',
    'replica.broken': 'promotion failed; the copy needs a snapshot',
    'replica.bootstrapping': 'promotion failed; no usable copy',
    stopped: 'shutdown',
  },
  'master.serving': {
    'master.fenced': 'writes stopped (a switchover, a higher epoch, shutdown)',
    demoting: 'demote',
    stopped: 'shutdown',
  },
  'master.fenced': {
    'master.serving': 'the switchover was called off, or the election’s lock is fresh again',
    demoting: 'demote',
    stopped: 'shutdown',
  },
  demoting: {
    'replica.following': 'following the new master from this copy',
    'replica.bootstrapping': 'following the new master; no usable copy',
    'replica.recovering': 'following the new master; replaying',
    stopped: 'shutdown',
  },
  stopped: {},
};

export type HaMode = 'standalone' | 'master' | 'replica';

/** The role a state belongs to, as `/health` reports it. Transitional states report the role being left. */
export function modeOf(state: HaState, previous: HaState): HaMode {
  if (state === 'standalone') return 'standalone';
  if (state.startsWith('master.') || state === 'demoting') return 'master';
  if (state.startsWith('replica.') || state === 'promoting') return 'replica';
  return state === 'stopped' ? modeOf(previous, 'stopped') : 'standalone';
}

export class TransitionError extends Error {}

export type TransitionListener = (from: HaState, to: HaState, reason: string) => void;

/**
 * The node's HA state: one value, changed only through `to()`, which checks the transition
 * against TRANSITIONS, logs it once and tells the listeners (the metrics, the write gate).
 */
export class HaStateMachine {
  private current: HaState;
  private previous: HaState;
  private readonly listeners: TransitionListener[] = [];
  private waiters: Array<() => void> = [];

  constructor(
    initial: HaState,
    private readonly log: Logger,
  ) {
    this.current = initial;
    this.previous = initial;
  }

  get state(): HaState {
    return this.current;
  }

  get mode(): HaMode {
    return modeOf(this.current, this.previous);
  }

  is(...states: HaState[]): boolean {
    return states.includes(this.current);
  }

  onTransition(fn: TransitionListener): void {
    this.listeners.push(fn);
  }

  /** Resolves true at the next transition, or false once `timeoutMs` passes without one. */
  nextTransition(timeoutMs: number): Promise<boolean> {
    if (timeoutMs <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== wake);
        resolve(false);
      }, timeoutMs);
      this.waiters.push(wake);
    });
  }

  /** Moves to `to`; a no-op when already there. `detail` says why, in this instance. */
  to(to: HaState, detail?: string): void {
    const from = this.current;
    if (from === to) return;
    const meaning = TRANSITIONS[from][to];
    if (meaning === undefined) throw new TransitionError(`no HA transition from ${from} to ${to}`);
    this.previous = from;
    this.current = to;
    const reason = detail ?? meaning;
    this.log.info({ from_state: from, to_state: to, reason }, `HA state ${from} -> ${to}`);
    for (const l of this.listeners) l(from, to, reason);
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
