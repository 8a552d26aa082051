import { stmt } from '../../db/connection.js';
import type { Store } from '../../domain/store.js';
import { DeadlineHeap, type Timed } from './deadline-heap.js';

/**
 * While polls are held, how often to look for commits no hook reports: another process's
 * (the CLI run against a live database, a master's WAL without a replication master).
 */
const OTHER_COMMITS_CHECK_MS = 250;

interface Waiter extends Timed {
  nodeId: string;
  /** The version the client already has; a wake-up for this same version is ignored. */
  index: number;
  resolve: () => void;
}

/**
 * Blocking polls held until a node's rendered-config version moves. A held request costs an
 * entry in two maps: no database work and no timer of its own. One timer serves the earliest
 * deadline of a heap. After each commit (the writer's hook, or the replica's applier), and
 * every OTHER_COMMITS_CHECK_MS while anything is held (other processes' commits have no hook),
 * `changed()` makes one query for the nodes whose version moved past the highest index seen so
 * far, and answers only their waiters.
 */
export class VersionWaiters {
  private readonly byNode = new Map<string, Set<Waiter>>();
  private readonly heap = new DeadlineHeap<Waiter>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private seenIndex: number;
  private closed = false;
  private pending: NodeJS.Immediate | undefined;
  private otherCommitsCheck: NodeJS.Timeout | undefined;

  constructor(private readonly store: Store) {
    this.seenIndex = this.renderIndex() ?? 0;
  }

  get held(): number {
    return this.heap.size;
  }

  /**
   * Resolves when the node's version moves away from `index`, when `deadline` (a
   * performance.now() time) passes, when `signal` aborts, or at close.
   */
  wait(nodeId: string, index: number, deadline: number, signal?: AbortSignal): Promise<void> {
    if (this.closed || signal?.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const waiter: Waiter = {
        nodeId,
        index,
        deadline,
        heapIndex: -1,
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => this.finish(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
      let set = this.byNode.get(nodeId);
      if (!set) this.byNode.set(nodeId, (set = new Set()));
      set.add(waiter);
      this.heap.push(waiter);
      this.arm();
      this.checkOtherCommits();
    });
  }

  /**
   * Call after anything may have changed the database. The check runs once the current
   * callback is done, so the write that caused it answers its own client first, and a burst of
   * commits costs one query.
   */
  changed(): void {
    if (this.pending || this.closed) return;
    this.pending = setImmediate(() => {
      this.pending = undefined;
      this.wakeMoved();
    });
  }

  /** One query every OTHER_COMMITS_CHECK_MS (the render index row) while anything is held. */
  private checkOtherCommits(): void {
    if (this.otherCommitsCheck) return;
    this.otherCommitsCheck = setInterval(() => {
      if (this.heap.size > 0) return this.changed();
      clearInterval(this.otherCommitsCheck);
      this.otherCommitsCheck = undefined;
    }, OTHER_COMMITS_CHECK_MS);
    this.otherCommitsCheck.unref();
  }

  private wakeMoved(): void {
    const top = this.renderIndex();
    if (top === undefined || top === this.seenIndex) return;
    const since = this.seenIndex;
    this.seenIndex = top;
    if (this.byNode.size === 0) return;
    if (top < since) {
      // A replica that re-synced from a snapshot can go back; everyone re-reads.
      for (const w of this.heap.drain()) this.finish(w);
      return;
    }
    const moved = stmt(this.store.reader, 'SELECT id, config_index FROM nodes WHERE config_index > ?').all(since) as {
      id: string;
      config_index: number;
    }[];
    for (const { id, config_index } of moved) {
      const set = this.byNode.get(id);
      if (!set) continue;
      for (const w of [...set]) if (w.index !== config_index) this.finish(w);
    }
  }

  /** Answers every held request (with whatever version is current) and accepts no more. */
  close(): void {
    this.closed = true;
    if (this.pending) clearImmediate(this.pending);
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    clearInterval(this.otherCommitsCheck);
    this.otherCommitsCheck = undefined;
    for (const w of this.heap.drain()) this.finish(w);
  }

  private finish(w: Waiter): void {
    this.heap.remove(w);
    const set = this.byNode.get(w.nodeId);
    if (set?.delete(w) && set.size === 0) this.byNode.delete(w.nodeId);
    w.resolve();
  }

  private renderIndex(): number | undefined {
    try {
      return stmt(this.store.reader, 'SELECT value FROM render_index WHERE id = 1').pluck().get() as number | undefined;
    } catch {
      // A replica without its copy yet reads an empty placeholder database.
      return undefined;
    }
  }

  /** Keeps the single timer at the earliest deadline (re-armed only when that moves earlier). */
  private arm(): void {
    const next = this.heap.peek();
    if (!next) return;
    if (this.timer && next.deadline >= this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = next.deadline;
    this.timer = setTimeout(() => this.expire(), Math.max(0, next.deadline - performance.now()));
    this.timer.unref();
  }

  private expire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = performance.now();
    for (let w = this.heap.peek(); w && w.deadline <= now; w = this.heap.peek()) this.finish(w);
    this.arm();
  }
}
