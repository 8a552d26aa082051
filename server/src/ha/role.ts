import type { ReplicationMaster } from '../replication/master/master.js';
import type { Position } from '../replication/wire/record.js';
import type { ReplicationReplica } from '../replication/replica/replica.js';
import type { ElectionStatus } from './elector.js';
import type { SyncGate } from './semisync.js';
import type { HaMode, HaState, HaStateMachine } from './states.js';
import type { Timeline } from './timeline.js';

export type { HaMode } from './states.js';

export interface Lag {
  transactions: number;
  ms: number;
}

export interface ReplicaStatus {
  id: string;
  url: string | null;
  connected: boolean;
  candidate: boolean;
  position: { txid: number; checksum: string | null };
  lag: Lag & { bytes: number };
  last_ack_at: string | null;
}

/**
 * What this node is in the HA picture right now, and the figures health checks, metrics and the
 * cluster endpoints report. The state machine says which role; HaNode swaps the replication
 * parts in and out as the role changes, and this reads whichever are there.
 */
export class HaRole {
  master: ReplicationMaster | undefined;
  /** On a master with NEBULAGC_SYNC_REPLICAS: what write answers wait for. */
  sync: SyncGate | undefined;
  replica: ReplicationReplica | undefined;
  /** The master's API URL and node id as this node last learnt them (its stream, a switchover). */
  knownMaster: { url: string; nodeId: string | undefined } | undefined;
  /** In auto mode: the election as /health reports it. */
  election: (() => ElectionStatus) | undefined;
  /** In auto mode: whether this node's lock is fresh enough to take writes (fencing before the TTL). */
  writeLease: (() => boolean) | undefined;
  /** Transactions kept in quarantine on this node since it started. */
  quarantinedTransactions = 0;

  constructor(
    readonly machine: HaStateMachine,
    readonly timeline: Timeline,
    readonly nodeId: string,
    /** This node's API URL as clients should use it (NEBULAGC_ADVERTISE_URL). */
    public selfUrl: string,
  ) {}

  get state(): HaState {
    return this.machine.state;
  }

  get mode(): HaMode {
    return this.machine.mode;
  }

  /** May take writes now: a standalone node, or a master that is not fenced. */
  get takesWrites(): boolean {
    return this.machine.is('standalone', 'master.serving') && (this.writeLease?.() ?? true);
  }

  get epoch(): number {
    return this.timeline.highestSeen;
  }

  setKnownMaster(url: string, nodeId: string | undefined): void {
    this.knownMaster = { url: url.replace(/\/+$/, ''), nodeId };
  }

  /** Where writes go: this node while it is master, else the master it knows of. */
  get masterUrl(): string | undefined {
    if (this.machine.is('master.serving', 'master.fenced')) return this.selfUrl;
    if (this.mode === 'standalone') return undefined;
    return this.knownMaster?.url;
  }

  get masterNodeId(): string | undefined {
    if (this.machine.is('master.serving', 'master.fenced')) return this.nodeId;
    return this.knownMaster?.nodeId;
  }

  /** The newest position captured (master) or visible to readers (replica). */
  get position(): Position | undefined {
    return this.master?.position ?? this.replica?.position;
  }

  /** A replica's distance behind the master: transactions known but not applied, and time. */
  lag(now: number = Date.now()): Lag {
    const r = this.replica;
    if (!r) return { transactions: 0, ms: 0 };
    const applied = r.position?.txid ?? 0;
    const known = r.masterPosition?.txid ?? applied;
    const transactions = Math.max(0, known - applied);
    const silence = r.lastContactMs === undefined ? Infinity : now - r.lastContactMs;
    let ms = 0;
    if (!r.hasCopy) ms = Infinity;
    else if (transactions > 0 && r.masterCommitTimeMs !== undefined) ms = Math.max(0, performance.timeOrigin + performance.now() - r.masterCommitTimeMs);
    // A silent stream (heartbeats every 500 ms) means we cannot know how far behind we are.
    if (!r.connected || silence > 1500) ms = Math.max(ms, silence);
    return { transactions, ms };
  }

  replicas(): ReplicaStatus[] {
    const m = this.master;
    if (!m) return [];
    const head = m.position.txid;
    return [...m.replicas.values()].map((v) => {
      const behind = Math.max(0, head - v.ackedTxid);
      const firstUnacked = behind > 0 ? m.log.commitTimeOf(v.ackedTxid + 1) : undefined;
      return {
        id: v.id,
        url: v.url ?? null,
        connected: v.connected,
        candidate: v.candidate,
        position: { txid: v.ackedTxid, checksum: v.ackedChecksum ?? null },
        lag: {
          transactions: behind,
          bytes: m.log.bytesBetween(v.ackedTxid, head),
          ms: firstUnacked === undefined ? 0 : Math.max(0, performance.timeOrigin + performance.now() - firstUnacked),
        },
        last_ack_at: v.lastAckAt ? new Date(v.lastAckAt).toISOString() : null,
      };
    });
  }
}
