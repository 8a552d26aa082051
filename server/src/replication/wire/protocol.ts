import type { Readable } from 'node:stream';
import type { EpochStart } from '../../ha/timeline.js';
import type { Position } from './record.js';

/**
 * The replication protocol between a replica and its master, in one place: the paths, the
 * headers, the answers that mean something to a replica, and the three calls a replica makes
 * (stream, snapshot, ack) behind the `Upstream` interface. HttpUpstream speaks it over HTTP;
 * tests use a fake. The record format itself is record.ts.
 */
export const PATHS = {
  stream: '/internal/v1/replication/stream',
  snapshot: '/internal/v1/replication/snapshot',
  position: '/internal/v1/replication/position',
  ack: '/internal/v1/replication/ack',
  promote: '/internal/v1/ha/promote',
  failsafe: '/internal/v1/ha/failsafe',
  heartbeats: '/internal/v1/heartbeats',
  lighthouses: '/internal/v1/lighthouses',
} as const;

/** Response headers of a stream, which a replica reads before any record. */
export const HEADERS = {
  advertiseUrl: 'x-nebulagc-advertise-url',
  nodeId: 'x-nebulagc-node-id',
  epoch: 'x-nebulagc-epoch',
  history: 'x-nebulagc-history',
  recordFormat: 'x-nebulagc-record-format',
  /** '1' when the master waits for replicas' acknowledgements (NEBULAGC_SYNC_REPLICAS): ack at once. */
  sync: 'x-nebulagc-sync',
} as const;

/** What a replica says about itself when it asks for a stream or a snapshot. */
export interface Peer {
  replicaId: string;
  replicaUrl: string;
  /** Fingerprint of the HMAC secret (never the secret). */
  secretFp: string;
  /** The highest epoch the replica has heard of: a master below it is stale. */
  seenEpoch: number;
  candidate: boolean;
  /** The replica's process, told apart from a restart of it. */
  instanceId: string | undefined;
}

export interface OpenedStream {
  /** The records, as the master writes them. */
  body: Readable;
  /** The record format the master sends; undefined from a release before formats were named. */
  format: string | undefined;
  epoch: number;
  history: EpochStart[] | undefined;
  advertiseUrl: string | undefined;
  nodeId: string | undefined;
  /** The master waits for acknowledgements: send each as soon as a batch is durable. */
  sync: boolean;
}

export interface OpenedSnapshot {
  body: Readable;
  contentLength: number;
}

/** The upstream answered, but not with a stream or snapshot: `code` and `details` say why. */
export class UpstreamRefusal extends Error {
  constructor(
    readonly status: number,
    readonly code: string | undefined,
    readonly details: Record<string, unknown>,
    message: string,
  ) {
    super(message);
  }
}

/** The node a replica follows, as the replica uses it. Every method may throw UpstreamRefusal. */
export interface Upstream {
  readonly url: string;
  stream(from: Position, format: number, peer: Peer, signal: AbortSignal): Promise<OpenedStream>;
  snapshot(peer: Peer, signal: AbortSignal): Promise<OpenedSnapshot>;
  ack(replicaId: string, durable: Position, seenEpoch: number): Promise<void>;
  close(): void;
}
