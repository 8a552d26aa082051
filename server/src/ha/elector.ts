import type { Logger } from '../log.js';
import type { Coordinator, LeaderValue, Lock, MemberValue, SyncMember } from './election/coordinator.js';
import type { HaRole } from './role.js';

export interface ElectionSettings {
  nodeId: string;
  candidate: boolean;
  /** A replica further behind what it last heard the master had than this (transactions) does not run. */
  maxLagOnFailover: number;
  /** Higher wins a tie between equally caught-up candidates; then the lower node id. */
  priority: number;
  /** NEBULAGC_FAILSAFE: a master that loses the coordinator keeps writing while every member still answers it. */
  failsafe: boolean;
  /** NEBULAGC_SYNC_REPLICAS: each acknowledged write is on this many replicas. */
  syncReplicas: number;
}

/** What the elector drives: the same transitions an operator calls. */
export interface ElectedNode {
  readonly role: HaRole;
  promoteElected(epoch: number): Promise<void>;
  follow(url: string, nodeId: string): Promise<void>;
  fence(reason: string): void;
  /** Resolves once nothing uploads for this node as master (the backup). */
  masterWorkStopped(): Promise<void>;
  /** Lifts a fence, unless a newer epoch forbids it; true when the node takes writes again. */
  unfence(reason: string): boolean;
  /** Failsafe: asks a member to confirm it still follows this master. */
  failsafePing(url: string, timeoutMs: number): Promise<boolean>;
}

export interface ElectionStatus {
  coordinator: string;
  holder: { node_id: string; url: string; epoch: number } | null;
  lock_held: boolean;
  /** How long the lock stays valid since its last renewal was sent; null unless held. */
  lock_ttl_left_ms: number | null;
  candidate: boolean;
  coordinator_reachable: boolean;
  lock_renewal_errors: number;
  failsafe: boolean;
  /** A master writing without a fresh lock because every member answered its failsafe round. */
  failsafe_active: boolean;
}

export type StartDecision = { kind: 'master'; epoch: number } | { kind: 'replica'; holder: LeaderValue };

const TICK_MS = 200;
const PROBE_MS = 500;
const PUBLISH_MS = 500;
const START_PATIENCE_MS = 15_000;
/** How long the other candidates stand back for the target of a planned handover. */
const HANDOVER_MS = 5000;

/** Whether a member's API answers at all (its /health/live), within PROBE_MS. */
async function answers(url: string): Promise<boolean> {
  try {
    return (await fetch(`${url}/health/live`, { signal: AbortSignal.timeout(PROBE_MS) })).ok;
  } catch {
    return false;
  }
}

const wait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Automatic failover through a coordinator lock. The holder is the master; it fences itself
 * (no writes) as soon as it has not renewed the lock for half the TTL, before any other node can
 * take it, and takes writes again once it holds a fresh lock. Replicas follow whoever holds it.
 * When it is free, a candidate runs only if it holds what it last heard the master had (within
 * NEBULAGC_MAX_LAG_ON_FAILOVER), no live member is further ahead (Patroni's
 * _is_healthiest_node; ties go by priority, then node id), and, with synchronous replicas, no
 * unreachable member of the last sync set may hold writes it lacks.
 */
export class Elector {
  private lock: Lock | undefined;
  private holderValue: LeaderValue | undefined;
  private unwatch: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastPublish = 0;
  private acting = false;
  private closed = false;
  /** This elector fenced the master for a stale lock: a fresh one lifts it. */
  private leaseFenced = false;
  /** A planned handover is under way: no re-acquiring, no lifting the fence. */
  private handingOver = false;
  private renewalErrors = 0;
  private coordinatorDownSince: number | undefined;
  /** performance.now() when the last failsafe round every member answered was sent. */
  private failsafeOkAt = -Infinity;
  /** On a replica: performance.now() of the last failsafe round of the master it follows. */
  private failsafeHeardAt = -Infinity;
  /** Members as of the last successful read, for failsafe rounds while the coordinator is away. */
  private knownMembers: MemberValue[] = [];
  /** The master's sync set as its member record last gave it. */
  private lastSyncSet: SyncMember[] | undefined;
  private failsafeTimer: NodeJS.Timeout | undefined;
  private roundInFlight = false;

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

  /** What /health and /cluster/status report of the election. */
  status(): ElectionStatus {
    const h = this.holderValue;
    return {
      coordinator: this.c.name,
      holder: h ? { node_id: h.nodeId, url: h.url, epoch: h.epoch } : null,
      lock_held: this.lock !== undefined,
      lock_ttl_left_ms: this.lock ? Math.max(0, Math.round(this.c.ttlMs - this.lockAgeMs())) : null,
      candidate: this.s.candidate,
      coordinator_reachable: this.coordinatorDownSince === undefined,
      lock_renewal_errors: this.renewalErrors,
      failsafe: this.s.failsafe,
      failsafe_active: this.node.role.master !== undefined && !this.leaseFresh() && this.failsafeFresh(),
    };
  }

  /** This node holds the lock and renewed it within half the TTL. */
  leaseFresh(): boolean {
    return this.lockAgeMs() < this.c.ttlMs / 2;
  }

  /** Whether this master may take writes: a fresh lock, or (failsafe) every member answered lately. */
  writeAllowed(): boolean {
    return this.leaseFresh() || this.failsafeFresh();
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
      const holder = await this.bounded('a holder read', this.c.holder());
      this.holderValue = holder;
      if (holder && holder.nodeId !== this.s.nodeId) return { kind: 'replica', holder };
      // A holder with our id is a lock this node held before a restart: it expires within the TTL.
      if (!holder && (await this.mayRun(txid, undefined)) !== 'no') {
        const lock = await this.acquire();
        if (lock) return { kind: 'master', epoch: lock.epoch };
      }
      if (Date.now() > until) throw new Error(`no master was elected through ${this.c.name} within ${START_PATIENCE_MS / 1000} s, and this node may not run (not a candidate, or a member is further ahead)`);
      await wait(TICK_MS);
    }
  }

  /** Starts the loop that keeps the node's role in step with the lock. */
  run(): void {
    this.schedule(TICK_MS);
    if (this.s.failsafe) this.failsafeTimer = setInterval(() => void this.failsafeTick(), TICK_MS);
  }

  /**
   * A planned handover (SIGTERM, POST /cluster/switchover): stop writes, wait (bounded) until the
   * target holds everything, name it in the handover note so the other candidates stand back,
   * and let the lock go at once, so the election takes a tick rather than a TTL.
   */
  async handOver(targetId: string, caughtUp: () => boolean, waitMs: number): Promise<void> {
    if (!this.lock) throw new Error('this node does not hold the lock');
    this.handingOver = true;
    this.leaseFenced = true;
    this.node.fence(`handing the lock over to ${targetId}`);
    await this.node.masterWorkStopped();
    const until = Date.now() + waitMs;
    while (!caughtUp() && Date.now() < until) await wait(10);
    await this.bounded('the handover note', this.c.setHandover({ from: this.s.nodeId, to: targetId, until: Date.now() + HANDOVER_MS })).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'could not write the handover note; the election decides'));
    this.log.info({ to: targetId, caught_up: caughtUp() }, 'handing the lock over');
    await this.releaseLock();
  }

  /** A handover that found no taker: this node may run again. */
  handOverEnded(): void {
    this.handingOver = false;
    this.schedule(0);
  }

  /** On a replica: the master it follows sent a failsafe round. False when it follows another. */
  noteFailsafe(fromNodeId: string): boolean {
    const role = this.node.role;
    if (!role.replica || role.knownMaster?.nodeId !== fromNodeId) return false;
    this.failsafeHeardAt = performance.now();
    return true;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.failsafeTimer);
    this.unwatch?.();
    await this.releaseLock();
    await this.c.close();
  }

  /**
   * A coordinator call that gets no answer (a partition drops packets, so no error comes either)
   * must not stall the loop: it fails after half the TTL, at least a second.
   */
  private bounded<T>(what: string, p: Promise<T>): Promise<T> {
    const ms = Math.max(1000, this.c.ttlMs / 2);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.c.name} did not answer ${what} within ${ms} ms`)), ms);
    });
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  }

  private lockAgeMs(): number {
    return this.lock ? performance.now() - this.lock.renewedAt : Infinity;
  }

  private failsafeFresh(): boolean {
    return this.s.failsafe && performance.now() - this.failsafeOkAt < this.c.ttlMs / 2;
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
      this.coordinatorFailed((err as Error).message);
    } finally {
      this.acting = false;
      this.schedule(TICK_MS);
    }
  }

  /** Logged once per outage, not once per tick. */
  private coordinatorFailed(why: string): void {
    if (this.coordinatorDownSince !== undefined) return;
    this.coordinatorDownSince = Date.now();
    this.log.warn({ err: why, coordinator: this.c.name }, 'the coordinator does not answer; retrying');
  }

  private coordinatorAnswered(): void {
    if (this.coordinatorDownSince === undefined) return;
    this.log.info({ coordinator: this.c.name, down_ms: Date.now() - this.coordinatorDownSince }, 'the coordinator answers again');
    this.coordinatorDownSince = undefined;
  }

  private async step(): Promise<void> {
    if (this.node.role.master) await this.masterStep();
    else if (this.node.role.replica) await this.replicaStep();
  }

  private async masterStep(): Promise<void> {
    const role = this.node.role;
    const holder = this.holderValue;
    const other = holder !== undefined && holder.nodeId !== this.s.nodeId;
    // A switchover in progress follows the new holder itself.
    if (other && this.handingOver) return;
    if (other) {
      this.log.warn({ holder }, 'another node holds the lock: following it');
      this.lock = undefined;
      this.handingOver = false;
      await this.node.follow(holder.url, holder.nodeId);
      return;
    }
    if (role.state === 'master.serving' && !this.writeAllowed()) {
      this.leaseFenced = true;
      this.node.fence(this.lock ? `the ${this.c.name} lock was not renewed within half its TTL` : `this node lost the ${this.c.name} lock`);
    }
    if (this.handingOver) return;
    if (!this.lock && !holder) await this.reacquire();
    if (role.state === 'master.fenced' && this.leaseFenced && this.writeAllowed() && this.node.unfence(this.leaseFresh() ? `the ${this.c.name} lock is fresh again` : 'failsafe: every member answered')) {
      this.leaseFenced = false;
    }
    await this.publish(role.master?.position.txid ?? 0, false);
  }

  /** A master whose lock expired (a coordinator outage, a pause) takes it again if it is still free. */
  private async reacquire(): Promise<void> {
    const lock = await this.acquire();
    if (!lock) return;
    if (this.node.role.state === 'master.serving' || this.node.unfence(`re-acquired the ${this.c.name} lock`)) {
      this.leaseFenced = false;
      return;
    }
    this.log.warn('re-acquired the lock but may not take writes (a newer epoch exists): letting it go');
    await this.releaseLock();
  }

  /**
   * Its own loop, so a coordinator call that hangs cannot delay it. Rounds start before the lease
   * goes stale, so writes do not pause at the switch to failsafe. A fenced master sends none: the
   * replicas must be free to elect once it has stopped writing.
   */
  private async failsafeTick(): Promise<void> {
    const role = this.node.role;
    if (this.roundInFlight || this.handingOver || role.state !== 'master.serving' || this.lockAgeMs() <= this.c.ttlMs * 0.3) return;
    this.roundInFlight = true;
    try {
      await this.failsafeRound();
    } finally {
      this.roundInFlight = false;
    }
  }

  private async failsafeRound(): Promise<void> {
    // Every member the coordinator last listed, and every replica this master has known: any of
    // them that is alive and not answering could be running for master.
    const urls = new Map(this.knownMembers.filter((m) => m.nodeId !== this.s.nodeId).map((m) => [m.nodeId, m.url]));
    for (const v of this.node.role.master?.replicas.values() ?? []) if (v.url && v.id !== this.s.nodeId) urls.set(v.id, v.url);
    const peers = [...urls].map(([nodeId, url]) => ({ nodeId, url }));
    const sentAt = performance.now();
    const replies = await Promise.all(peers.map((m) => this.node.failsafePing(m.url, Math.min(PROBE_MS, this.c.ttlMs / 4))));
    const silent = peers.filter((_, i) => !replies[i]).map((m) => m.nodeId);
    if (silent.length === 0) {
      if (!this.failsafeFresh() && !this.leaseFresh()) this.log.warn({ members: peers.map((m) => m.nodeId) }, 'failsafe: the coordinator is away but every member answered; writes go on');
      this.failsafeOkAt = sentAt;
    } else if (this.failsafeFresh()) {
      this.log.error({ silent }, 'failsafe: a member did not answer');
    }
  }

  private async replicaStep(): Promise<void> {
    const role = this.node.role;
    const replica = role.replica!;
    await this.publish(replica.position?.txid ?? 0, false);
    const holder = this.holderValue;
    if (holder) {
      if (holder.nodeId !== this.s.nodeId && role.knownMaster?.url !== holder.url) await this.node.follow(holder.url, holder.nodeId);
      return;
    }
    const at = replica.hasCopy ? replica.position : undefined;
    if (!at) return;
    const decision = await this.mayRun(at.txid, replica.masterPosition?.txid);
    if (decision === 'no') return;
    const lock = await this.acquire();
    if (!lock) return;
    // Between the comparison and the lock a member may have published a newer position.
    const ahead = decision === 'run' ? await this.reachableAhead(at.txid, await this.bounded('a members read', this.c.members())) : undefined;
    if (ahead) {
      this.log.warn({ txid: at.txid, ahead: ahead.nodeId, ahead_txid: ahead.txid }, 'won the lock but a reachable member is further ahead: releasing it');
      await this.releaseLock();
      return;
    }
    try {
      await this.node.promoteElected(lock.epoch);
      await this.bounded('a handover delete', this.c.setHandover(undefined)).catch(() => undefined);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'won the election but could not promote: releasing the lock');
      await this.releaseLock();
    }
  }

  /**
   * The candidate rules. Every decision to run is logged with the positions it compared.
   * 'planned': this node is the target of a handover, which skips the comparison with members
   * (the old master, as caught up as it, may win the tie).
   */
  private async mayRun(txid: number, heardTxid: number | undefined): Promise<'no' | 'run' | 'planned'> {
    if (!this.s.candidate) return 'no';
    if (heardTxid !== undefined && heardTxid - txid > this.s.maxLagOnFailover) {
      this.log.info({ txid, heard_txid: heardTxid, max_lag: this.s.maxLagOnFailover }, 'not running: behind what the master was heard to have');
      return 'no';
    }
    if (performance.now() - this.failsafeHeardAt < this.c.ttlMs) {
      this.log.info('not running: the master is alive in failsafe mode');
      return 'no';
    }
    const handover = await this.bounded('a handover read', this.c.handover());
    const planned = handover !== undefined && handover.until > Date.now() ? handover : undefined;
    if (planned && planned.to !== this.s.nodeId) {
      this.log.debug({ to: planned.to }, 'not running: a planned handover names another node');
      return 'no';
    }
    const members = await this.bounded('a members read', this.c.members());
    const compared = members.filter((m) => m.nodeId !== this.s.nodeId).map((m) => ({ id: m.nodeId, txid: m.txid }));
    if (!planned) {
      const ahead = await this.reachableAhead(txid, members);
      if (ahead) {
        this.log.debug({ txid, ahead: ahead.nodeId, ahead_txid: ahead.txid }, 'not running: a reachable member is further ahead or wins the tie');
        return 'no';
      }
    }
    const unknown = await this.unreachableSyncHolders(txid, members);
    if (unknown.length > Math.max(0, this.s.syncReplicas - 1)) {
      this.log.warn({ txid, unreachable: unknown, sync_replicas: this.s.syncReplicas }, 'not running: members of the sync set that may hold acknowledged writes this node lacks do not answer');
      return 'no';
    }
    this.log.info({ txid, heard_txid: heardTxid ?? null, members: compared, handover: planned?.to ?? null }, 'running for master');
    return planned ? 'planned' : 'run';
  }

  /** A reachable candidate that is further ahead or wins the tie (a dead master's record outlives it by up to a TTL). */
  private async reachableAhead(txid: number, members: MemberValue[]): Promise<MemberValue | undefined> {
    const beats = (m: MemberValue): boolean => m.txid > txid || (m.txid === txid && (m.priority > this.s.priority || (m.priority === this.s.priority && m.nodeId < this.s.nodeId)));
    const rivals = members.filter((m) => m.nodeId !== this.s.nodeId && m.candidate && beats(m));
    const reachable = await Promise.all(rivals.map(async (m) => ((await answers(m.url)) ? m : undefined)));
    return reachable.find((m) => m !== undefined);
  }

  /**
   * Members of the master's last sync set that do not answer and may hold writes this node
   * lacks: each acknowledged write is on syncReplicas replicas, so with at most syncReplicas - 1
   * of them unknown, one that holds it is among those compared. One that was already
   * disconnected from the master, at or behind this node, holds nothing newer.
   */
  private async unreachableSyncHolders(txid: number, members: MemberValue[]): Promise<string[]> {
    if (this.s.syncReplicas === 0 || !this.lastSyncSet) return [];
    const urls = new Map(members.map((m) => [m.nodeId, m.url]));
    const doubtful = this.lastSyncSet.filter((m) => m.id !== this.s.nodeId && (m.connected || m.ackedTxid > txid));
    const silent = await Promise.all(doubtful.map(async (m) => (urls.has(m.id) && (await answers(urls.get(m.id)!)) ? undefined : m.id)));
    return silent.filter((id): id is string => id !== undefined);
  }

  private async acquire(): Promise<Lock | undefined> {
    const asked = this.c.acquire(
      { nodeId: this.s.nodeId, url: this.node.role.selfUrl },
      {
        lost: (why) => {
          this.log.error({ why }, `the ${this.c.name} lock was lost`);
          this.lock = undefined;
          this.schedule(0);
        },
        renewFailed: (why) => {
          this.renewalErrors++;
          this.coordinatorFailed(why);
        },
      },
    );
    let lock: Lock | undefined;
    try {
      lock = await this.bounded('a lock request', asked);
    } catch (err) {
      // Given up on, it may still succeed: a lock nobody here knows of must not stay held.
      void asked.then((late) => late?.release()).catch(() => undefined);
      throw err;
    }
    if (lock) {
      this.lock = lock;
      this.log.info({ epoch: lock.epoch, coordinator: this.c.name }, 'won the election');
    }
    return lock;
  }

  private async releaseLock(): Promise<void> {
    const lock = this.lock;
    this.lock = undefined;
    if (lock) await this.bounded('a lock release', lock.release()).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'could not release the lock; it expires with its TTL'));
  }

  private async publish(txid: number, now: boolean): Promise<void> {
    if (!now && Date.now() - this.lastPublish < PUBLISH_MS) return;
    this.lastPublish = Date.now();
    const role = this.node.role;
    const me: MemberValue = { nodeId: this.s.nodeId, url: role.selfUrl, txid, candidate: this.s.candidate, priority: this.s.priority };
    if (this.s.syncReplicas > 0 && role.master) {
      me.sync = [...role.master.replicas.values()].filter((v) => v.syncEligible).map((v) => ({ id: v.id, connected: v.connected, ackedTxid: v.ackedTxid }));
    }
    await this.bounded('a member record', this.c.publish(me));
    const members = await this.bounded('a members read', this.c.members());
    this.coordinatorAnswered();
    this.knownMembers = members;
    const holderId = this.holderValue?.nodeId;
    const masterRecord = holderId === undefined ? undefined : members.find((m) => m.nodeId === holderId);
    if (masterRecord) this.lastSyncSet = masterRecord.sync;
  }
}
