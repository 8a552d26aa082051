/**
 * What an election needs of a coordinator, whichever it is (LiteFS keeps its Leaser in lease.go
 * the same way): a lock with a time to live, renewed while held, its holder's value, and news
 * when the holder changes. The epoch comes from the coordinator at acquisition (etcd's
 * create_revision), so it grows across every node and every restart of the coordinator.
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
}

export interface Lock {
  /** The epoch the coordinator gave this holding. */
  readonly epoch: number;
  /** performance.now() of the last renewal the coordinator confirmed. */
  readonly renewedAt: number;
  /** Gives the lock up at once (a planned handover), so no node waits out the TTL. */
  release(): Promise<void>;
}

export interface Coordinator {
  readonly name: string;
  readonly ttlMs: number;
  /** Takes the lock if nobody holds it; undefined when someone does. `onLost` fires if the holding ends unasked. */
  acquire(value: Omit<LeaderValue, 'epoch'>, onLost: (why: string) => void): Promise<Lock | undefined>;
  /** The current holder, if any. */
  holder(): Promise<LeaderValue | undefined>;
  /** Calls `fn` on every change of holder (undefined: the lock is free), until the returned function is called. */
  watch(fn: (holder: LeaderValue | undefined) => void): Promise<() => void>;
  /** Publishes this node's member record (kept alive with it, gone when it dies). */
  publish(member: MemberValue): Promise<void>;
  members(): Promise<MemberValue[]>;
  close(): Promise<void>;
}
