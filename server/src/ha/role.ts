import type { ReplicationMaster } from '../replication/master.js';
import type { Position } from '../replication/record.js';
import type { ReplicationReplica } from '../replication/replica.js';

export type HaMode = 'standalone' | 'master' | 'replica';

export interface Lag {
  transactions: number;
  ms: number;
}

export interface ReplicaStatus {
  id: string;
  url: string | null;
  connected: boolean;
  position: { txid: number; checksum: string | null };
  lag: Lag & { bytes: number };
  last_ack_at: string | null;
}

/**
 * What this node is in the HA picture, and the figures health checks, metrics and the cluster
 * endpoints report. Holds no policy beyond reading the replication objects.
 */
export class HaRole {
  /** The master's API URL as it advertises it (learnt from its stream), for redirects. */
  private advertisedMaster: string | undefined;

  private replicaValue: ReplicationReplica | undefined;

  constructor(
    readonly mode: HaMode,
    /** This node's API URL as clients should use it (NEBULAGC_ADVERTISE_URL). */
    public selfUrl: string,
    private readonly configuredMasterUrl: string | undefined,
    readonly master: ReplicationMaster | undefined,
  ) {}

  attachReplica(replica: ReplicationReplica): void {
    this.replicaValue = replica;
  }

  get replica(): ReplicationReplica | undefined {
    return this.replicaValue;
  }

  setAdvertisedMaster(url: string): void {
    this.advertisedMaster = url.replace(/\/+$/, '');
  }

  /** Where writes go: this node on a master, the master's advertised URL on a replica. */
  get masterUrl(): string | undefined {
    if (this.mode === 'replica') return this.advertisedMaster ?? this.configuredMasterUrl;
    return this.mode === 'master' ? this.selfUrl : undefined;
  }

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
