import type { Logger } from '../log.js';
import type { Coordinator, LeaderValue, Lock, MemberValue } from './election/coordinator.js';
import type { HaRole } from './role.js';

export interface ElectionSettings {
  nodeId: string;
  candidate: boolean;
  /** A replica further behind what it last heard the master had than this (transactions) does not run. */
  maxLagOnFailover: number;
  /** Higher wins a tie between equally caught-up candidates; then the lower node id. */
  priority: number;
}

/** What the elector drives: the same transitions an operator calls. */
export interface ElectedNode {
  readonly role: HaRole;
  promoteElected(epoch: number): Promise<void>;
  follow(url: string, nodeId: string): Promise<void>;
  fence(reason: string): void;
}

export interface ElectionStatus {
  coordinator: string;
  holder: { node_id: string; url: string; epoch: number } | null;
  lock_held: boolean;
  /** How long the lock stays valid since its last renewal was sent; null unless held. */
  lock_ttl_left_ms: number | null;
  candidate: boolean;
}

export type StartDecision = { kind: 'master'; epoch: number } | { kind: 'replica'; holder: LeaderValue };

const TICK_MS = 200;
const PROBE_MS = 500;

/** Whether a member's API answers at all (its /health/live), within PROBE_MS. */
async function answers(url: string): Promise<boolean> {
  try {
    return (await fetch(`${url}/health/live`, { signal: AbortSignal.timeout(PROBE_MS) })).ok;
  } catch {
    return false;
  }
}
const PUBLISH_MS = 500;
const START_PATIENCE_MS = 15_000;

/**
 * Automatic failover through a coordinator lock. The holder is the master; it fences itself
 * (no writes) as soon as it has not renewed the lock for half the TTL, before any other node can
 * take it. Replicas follow whoever holds it. When it is free, a candidate runs only if it holds
 * what it last heard the master had (within NEBULAGC_MAX_LAG_ON_FAILOVER) and no live member is
 * further ahead (Patroni's _is_healthiest_node); ties go by priority, then node id.
 */
export class Elector {
  private lock: Lock | undefined;
  private holderValue: LeaderValue | undefined;
  private unwatch: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastPublish = 0;
  private acting = false;
  private closed = false;

  constructor(
    private readonly node: ElectedNode,
    private readonly c: Coordinator,
    private readonly s: ElectionSettings,
    private readonly log: Logger,
  ) {}

  get coordinator(): string {
    return this.c.name;
  }

  get holder(): LeaderValue | undefined {
    return this.holderValue;
  }

  /** What /health reports of the election. */
  status(): ElectionStatus {
    const h = this.holderValue;
    return {
      coordinator: this.c.name,
      holder: h ? { node_id: h.nodeId, url: h.url, epoch: h.epoch } : null,
      lock_held: this.lock !== undefined,
      lock_ttl_left_ms: this.lock ? Math.max(0, Math.round(this.c.ttlMs - (performance.now() - this.lock.renewedAt))) : null,
      candidate: this.s.candidate,
    };
  }

  /** This node holds the lock and renewed it within half the TTL: it may take writes. */
  leaseFresh(): boolean {
    return this.lock !== undefined && performance.now() - this.lock.renewedAt < this.c.ttlMs / 2;
  }

  /**
   * Before the node opens anything: follow the holder if there is one, else run. A fresh
   * cluster elects its first master here. Waits (bounded) while another node is being elected.
   */
  async start(txid: number): Promise<StartDecision> {
    this.unwatch = await this.c.watch((h) => {
      this.holderValue = h;
      this.schedule(0);
    });
    const until = Date.now() + START_PATIENCE_MS;
    for (;;) {
      await this.publish(txid, true);
      const holder = await this.c.holder();
      this.holderValue = holder;
      if (holder && holder.nodeId !== this.s.nodeId) return { kind: 'replica', holder };
      // A holder with our id is a lock this node held before a restart: it expires within the TTL.
      if (!holder && (await this.mayRun(txid, undefined))) {
        const lock = await this.acquire();
        if (lock) return { kind: 'master', epoch: lock.epoch };
      }
      if (Date.now() > until) throw new Error(`no master was elected through ${this.c.name} within ${START_PATIENCE_MS / 1000} s, and this node may not run (not a candidate, or a member is further ahead)`);
      await new Promise((r) => setTimeout(r, TICK_MS));
    }
  }

  /** Starts the loop that keeps the node's role in step with the lock. */
  run(): void {
    this.schedule(TICK_MS);
  }

  /**
   * A planned stop of the master: stop writes, give replicas a moment to hold everything, then
   * let the lock go at once, so the election takes a tick rather than a TTL.
   */
  async releaseForHandover(caughtUp: () => boolean): Promise<void> {
    if (!this.lock) return;
    this.node.fence('shutting down: handing the lock over');
    const until = Date.now() + 2000;
    while (!caughtUp() && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    await this.releaseLock();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.unwatch?.();
    await this.releaseLock();
    await this.c.close();
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    if (this.acting) return this.schedule(TICK_MS);
    this.acting = true;
    try {
      await this.step();
    } catch (err) {
      this.log.warn({ err: (err as Error).message, coordinator: this.c.name }, 'election step failed; retrying');
    } finally {
      this.acting = false;
      this.schedule(TICK_MS);
    }
  }

  private async step(): Promise<void> {
    const role = this.node.role;
    const holder = this.holderValue;
    if (role.master) {
      if (role.state === 'master.serving' && !this.leaseFresh()) {
        this.node.fence(`the ${this.c.name} lock was not renewed within half its TTL`);
      }
      if (holder && holder.nodeId !== this.s.nodeId) {
        this.log.warn({ holder }, 'another node holds the lock: following it');
        this.lock = undefined;
        await this.node.follow(holder.url, holder.nodeId);
      }
      await this.publish(role.master.position.txid, false);
      return;
    }
    const replica = role.replica;
    if (!replica) return;
    await this.publish(replica.position?.txid ?? 0, false);
    if (holder) {
      if (holder.nodeId !== this.s.nodeId && role.knownMaster?.url !== holder.url) await this.node.follow(holder.url, holder.nodeId);
      return;
    }
    const at = replica.hasCopy ? replica.position : undefined;
    if (!at || !(await this.mayRun(at.txid, replica.masterPosition?.txid))) return;
    const lock = await this.acquire();
    if (!lock) return;
    try {
      await this.node.promoteElected(lock.epoch);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'won the election but could not promote: releasing the lock');
      await this.releaseLock();
    }
  }

  /** The candidate rules: a candidate, caught up with what it heard, and no live member ahead. */
  private async mayRun(txid: number, heardTxid: number | undefined): Promise<boolean> {
    if (!this.s.candidate) return false;
    if (heardTxid !== undefined && heardTxid - txid > this.s.maxLagOnFailover) {
      this.log.info({ txid, heard_txid: heardTxid, max_lag: this.s.maxLagOnFailover }, 'not running: behind what the master was heard to have');
      return false;
    }
    const members = (await this.c.members()).filter((m) => m.nodeId !== this.s.nodeId && m.candidate);
    const beats = (m: MemberValue): boolean => m.txid > txid || (m.txid === txid && (m.priority > this.s.priority || (m.priority === this.s.priority && m.nodeId < this.s.nodeId)));
    // Only a reachable member counts: a dead master's record outlives it by up to a TTL.
    const reachable = await Promise.all(members.filter(beats).map(async (m) => ((await answers(m.url)) ? m : undefined)));
    const ahead = reachable.find((m) => m !== undefined);
    if (ahead) {
      this.log.debug({ txid, ahead: ahead.nodeId, ahead_txid: ahead.txid }, 'not running: a reachable member is further ahead or wins the tie');
      return false;
    }
    this.log.info({ txid, members: members.map((m) => ({ id: m.nodeId, txid: m.txid })) }, 'running for master: no reachable member is further ahead');
    return true;
  }

  private async acquire(): Promise<Lock | undefined> {
    const lock = await this.c.acquire(
      { nodeId: this.s.nodeId, url: this.node.role.selfUrl },
      {
        lost: (why) => {
          this.log.error({ why }, `the ${this.c.name} lock was lost`);
          this.lock = undefined;
          this.schedule(0);
        },
        renewFailed: (why) => this.log.warn({ why }, `renewing the ${this.c.name} lock failed`),
      },
    );
    if (lock) {
      this.lock = lock;
      this.log.info({ epoch: lock.epoch, coordinator: this.c.name }, 'won the election');
    }
    return lock;
  }

  private async releaseLock(): Promise<void> {
    const lock = this.lock;
    this.lock = undefined;
    await lock?.release().catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'could not release the lock; it expires with its TTL'));
  }

  private async publish(txid: number, now: boolean): Promise<void> {
    if (!now && Date.now() - this.lastPublish < PUBLISH_MS) return;
    this.lastPublish = Date.now();
    const me: MemberValue = { nodeId: this.s.nodeId, url: this.node.role.selfUrl, txid, candidate: this.s.candidate, priority: this.s.priority };
    await this.c.publish(me);
  }
}
