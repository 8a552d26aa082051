/**
 * What an election needs of a coordinator, whichever it is (LiteFS keeps its Leaser in lease.go
 * the same way): a lock with a time to live, renewed while held, its holder's value, and news
 * when the holder changes. The epoch comes from the coordinator at acquisition (etcd's
 * create_revision, Consul's ModifyIndex), so it grows across every node and every restart of the
 * coordinator.
 */
export interface LeaderValue {
  nodeId: string;
  /** The holder's advertised API URL: where writes and replicas go. */
  url: string;
  epoch: number;
}

/** This node's record in the coordinator while it lives: how candidates compare themselves. */
export interface MemberValue {
  nodeId: string;
  url: string;
  txid: number;
  candidate: boolean;
  priority: number;
  /**
   * A master with NEBULAGC_SYNC_REPLICAS: its sync set as of this record, so after its death a
   * candidate knows which replicas may hold acknowledged writes it lacks.
   */
  sync?: SyncMember[];
}

export interface SyncMember {
  id: string;
  connected: boolean;
  ackedTxid: number;
}

/** A planned handover names its target, so the other candidates stand back while the lock passes. */
export interface Handover {
  from: string;
  to: string;
  /** Wall-clock ms after which candidates ignore it (the target may have died on the way). */
  until: number;
}

export interface Lock {
  /** The epoch the coordinator gave this holding. */
  readonly epoch: number;
  /** performance.now() when the last renewal the coordinator confirmed was sent. */
  readonly renewedAt: number;
  /** Gives the lock up at once (a planned handover), so no node waits out the TTL. */
  release(): Promise<void>;
}

export interface LockEvents {
  /** The holding ended unasked: the lease or session expired, or was taken away. */
  lost(why: string): void;
  /** A renewal failed; the lock may still be held until its TTL runs out. */
  renewFailed(why: string): void;
}

export interface Coordinator {
  readonly name: string;
  /**
   * How long the coordinator is sure to keep a lock after the renewal it last confirmed was sent.
   * A holder fences at half of it, so it stops writing before any other node can acquire.
   */
  readonly ttlMs: number;
  /** Takes the lock if nobody holds it; undefined when someone does. */
  acquire(value: Omit<LeaderValue, 'epoch'>, events: LockEvents): Promise<Lock | undefined>;
  /** The current holder, if any. */
  holder(): Promise<LeaderValue | undefined>;
  /** Calls `fn` on every change of holder (undefined: the lock is free), until the returned function is called. */
  watch(fn: (holder: LeaderValue | undefined) => void): Promise<() => void>;
  /** Publishes this node's member record (kept alive with it, gone when it dies). */
  publish(member: MemberValue): Promise<void>;
  members(): Promise<MemberValue[]>;
  /** Writes (or, with undefined, deletes) the handover note. */
  setHandover(h: Handover | undefined): Promise<void>;
  handover(): Promise<Handover | undefined>;
  close(): Promise<void>;
}
