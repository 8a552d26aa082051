import { mkdirSync, rmSync } from 'node:fs';
import { finished } from 'node:stream';
import path from 'node:path';
import type { Logger } from '../../log.js';
import { Applier, ApplyError } from './applier.js';
import { UpstreamRefusal, type OpenedStream, type Peer, type Upstream } from '../wire/protocol.js';
import { CorruptRecordError, decodeRecord, RecordFramer, RECORD_FORMAT, RECORD_HEARTBEAT, RECORD_TX, type Position, type TxRecord } from '../wire/record.js';
import { downloadSnapshot, installSnapshot } from './snapshot-client.js';
import type { Timeline } from '../../ha/timeline.js';

export interface ReplicaOptions {
  dbPath: string;
  dir: string;
  replicaId: string;
  advertiseUrl: string;
  /** Identifies the HMAC secret without revealing it: a master with another secret refuses the stream. */
  secretFingerprint: string;
  /** This process's instance id: an upstream answering with it is this node itself. */
  instanceId?: string;
  /** Whether this node may be promoted; the master lists it in /cluster/peers. */
  candidate: boolean;
  timeline: Timeline;
  /** Heartbeats are due every 500 ms; this many ms of silence counts as a missed one. */
  heartbeatTimeoutMs?: number;
}

export interface ReplicaHooks {
  /** The copy was replaced or opened: reopen read connections. `undefined` closes them. */
  onCopyChanged(available: boolean): void;
  /** A batch was applied: readers see it. `commitTimesMs` are the master's commit times of its transactions. */
  onApplied(pos: Position, txCount: number, bytes: number, commitTimesMs: number[]): void;
  /** Everything up to `pos` is on disk (pages and position), and is acknowledged; `commitTimesMs` as in onApplied, for the transactions this call adds. */
  onDurable?(pos: Position, commitTimesMs: number[]): void;
  onHeartbeat(masterTimeMs: number, receivedAtMs: number): void;
  onStreamError(err: unknown): void;
  onMasterAdvertised(url: string, nodeId: string | undefined): void;
  /** The copy's condition changed (see ReplicaPhase). */
  onPhase(phase: ReplicaPhase, reason: string): void;
  /** The upstream answered that it is not the master and named one: follow that one. */
  onRedirected(url: string): void;
  /**
   * The master says the copy has writes it never had (an old master's). Called before the
   * snapshot replaces the copy: keep it. The returned function runs once the snapshot is in.
   */
  onDiverged(position: Position, divergence: Divergence): Promise<() => void>;
}

export type ReplicaPhase = 'bootstrapping' | 'recovering' | 'following' | 'broken';

export interface Divergence {
  forkTxid: number;
  transactions: number;
  masterUrl: string;
  masterEpoch: number | undefined;
}

/** A record from an epoch older than one this node has seen: it comes from a fenced master. */
export class StaleEpochError extends Error {}

interface Waiter {
  txid: number;
  resolve(ok: boolean): void;
  timer: NodeJS.Timeout;
}

const MAX_RECORD_BYTES = 1 << 30;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 10_000;
const ACK_INTERVAL_MS = 200;

/**
 * The replica's side: keeps a verified copy of the master's database and follows the stream.
 * No usable copy, a position off the master's history, or a copy that failed verification all
 * lead to a snapshot. Between reconnects it backs off with jitter.
 */
export class ReplicationReplica {
  private applier: Applier | undefined;
  private running = false;
  private abort: AbortController | undefined;
  private queue: TxRecord[] = [];
  private queueBytes = 0;
  private applyScheduled = false;
  private checkpointScheduled = false;
  /** makeDurable() running; batches applied meanwhile go in the next one. */
  private syncing = false;
  /** Applied batches not yet durable, for onDurable's commit times. */
  private notDurable: { lastTxid: number; commitTimesMs: number[] }[] = [];
  /** Copies being closed; a snapshot must not take the file's name before they are. */
  private closing: Promise<void> | undefined;
  private waiters: Waiter[] = [];
  private readonly stateFile: string;
  /** The master's latest position, from its records and heartbeats. */
  masterPosition: Position | undefined;
  masterCommitTimeMs: number | undefined;
  lastContactMs: number | undefined;
  connected = false;
  private phaseValue: ReplicaPhase = 'bootstrapping';
  private ackTimer: NodeJS.Timeout | undefined;
  private ackInFlight = false;
  /** The master holds writes until replicas acknowledge them: no pause before an ack. */
  private fastAcks = false;
  private loop: Promise<void> | undefined;
  private readonly warn = (msg: string): void => this.log.warn(msg);

  constructor(
    private upstream: Upstream,
    private readonly opts: ReplicaOptions,
    private readonly hooks: ReplicaHooks,
    private readonly log: Logger,
  ) {
    mkdirSync(opts.dir, { recursive: true });
    this.stateFile = replicaPositionFile(opts.dir);
    this.applier = Applier.open(opts.dbPath, this.stateFile, this.warn);
    if (this.applier) {
      if (this.applier.isRecovering) log.warn({ position: this.applier.position }, 'replica copy is ahead of its position file (a crash or power loss); replaying from it until the checksums agree');
      else log.info({ position: this.applier.position }, 'replica copy opened');
      this.phaseValue = this.applier.isRecovering ? 'recovering' : 'following';
    }
  }

  get phase(): ReplicaPhase {
    return this.phaseValue;
  }

  private setPhase(phase: ReplicaPhase, reason: string): void {
    if (phase === this.phaseValue) return;
    this.phaseValue = phase;
    this.hooks.onPhase(phase, reason);
  }

  /** The node this replica streams from. */
  get upstreamUrl(): string {
    return this.upstream.url;
  }

  /** Follows another master from the next connection on (the current stream ends now). */
  retarget(upstream: Upstream): void {
    const old = this.upstream;
    this.upstream = upstream;
    this.masterPosition = undefined;
    this.abort?.abort(new Error(`now following ${upstream.url}`));
    // A new master is up now: a reconnect backoff counted against the dead one must not delay it.
    this.wakeFromBackoff?.();
    old.close();
  }

  /** The newest transaction readers of the copy see. */
  get position(): Position | undefined {
    return this.applier?.position;
  }

  /** The newest transaction on disk, pages and position: the one acknowledged to the master. */
  get durablePosition(): Position | undefined {
    return this.applier?.durablePosition;
  }

  get id(): string {
    return this.opts.replicaId;
  }

  /** A copy that is known to be right, so it may be served. */
  get hasCopy(): boolean {
    return this.canFollow && !this.applier!.isRecovering;
  }

  /** A copy the stream can continue (one still replaying after a crash included). */
  private get canFollow(): boolean {
    return this.applier !== undefined && !this.applier.isBroken;
  }

  start(): void {
    this.running = true;
    if (this.hasCopy) this.hooks.onCopyChanged(true);
    this.loop = this.follow();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.abort?.abort();
    // A promotion waits for this: it must not wait out a reconnect backoff of up to 10 s.
    this.wakeFromBackoff?.();
    clearTimeout(this.ackTimer);
    await this.loop;
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    this.waiters = [];
    if (this.applier) this.retire(this.applier);
    this.applier = undefined;
    await this.closing;
    this.upstream.close();
  }

  /** Resolves true once the copy reaches `txid`, false after `timeoutMs`. */
  waitFor(txid: number, timeoutMs: number): Promise<boolean> {
    if ((this.position?.txid ?? -1) >= txid) return Promise.resolve(true);
    if (timeoutMs <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const w: Waiter = {
        txid,
        resolve,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          resolve(false);
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  private wakeFromBackoff: (() => void) | undefined;

  /** Waits `ms` before reconnecting, or until stop(). */
  private backoff(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wakeFromBackoff?.(), ms);
      timer.unref();
      this.wakeFromBackoff = () => {
        clearTimeout(timer);
        this.wakeFromBackoff = undefined;
        resolve();
      };
    });
  }

  private async follow(): Promise<void> {
    let backoff = BACKOFF_MIN_MS;
    while (this.running) {
      try {
        if (!this.canFollow) await this.takeSnapshot();
        // stop() may have come during the snapshot: it aborted that one, not the next request.
        if (!this.running) break;
        const outcome = await this.stream();
        if (outcome.kind === 'diverged') {
          const d = outcome.divergence;
          this.log.error(
            { position: this.position, fork_txid: d.forkTxid, diverged_transactions: d.transactions, master: d.masterUrl },
            `this copy has ${d.transactions} transaction(s) the new master never had (an old master's unreplicated writes): keeping the copy in quarantine, then resyncing`,
          );
          this.setPhase('broken', 'the copy is off the new master’s history');
          const recorded = await this.hooks.onDiverged(this.position!, d);
          await this.takeSnapshot();
          recorded();
        } else if (outcome.kind === 'snapshot') {
          this.log.warn({ position: this.position }, 'the master’s log no longer reaches this copy’s position; taking a snapshot');
          await this.takeSnapshot();
        }
        backoff = BACKOFF_MIN_MS;
      } catch (err) {
        this.connected = false;
        if (!this.running) break;
        this.hooks.onStreamError(err);
        if (err instanceof ApplyError || err instanceof CorruptRecordError) {
          this.log.error({ err: (err as Error).message, position: this.position }, 'replication stream rejected: the copy will resync from a snapshot');
          this.closeCopy('broken', (err as Error).message);
        } else if (err instanceof UpstreamError || err instanceof StaleEpochError) {
          this.log.error({ err: err.message, upstream: this.upstream.url, retry_ms: backoff }, 'the upstream refused this replica');
        } else {
          this.log.warn({ err: (err as Error).message, retry_ms: backoff }, 'replication stream failed; reconnecting');
        }
        await this.backoff(backoff / 2 + Math.random() * backoff);
        backoff = Math.min(BACKOFF_MAX_MS, backoff * 2);
      }
    }
  }

  /** Follows the stream until it ends, or until the master refuses our position. */
  private async stream(): Promise<{ kind: 'ended' | 'snapshot' } | { kind: 'diverged'; divergence: Divergence }> {
    const pos = this.position!;
    const timeline = this.opts.timeline;
    this.abort = new AbortController();
    if (!this.running) this.abort.abort();
    let opened: OpenedStream;
    try {
      opened = await this.upstream.stream(pos, RECORD_FORMAT, this.peer(), this.abort.signal);
    } catch (err) {
      if (!(err instanceof UpstreamRefusal)) throw err;
      if (err.status === 409 && err.code === 'SNAPSHOT_REQUIRED') {
        const verdict = err.details.verdict as { kind?: string; forkTxid?: number; transactions?: number } | undefined;
        if (verdict?.kind === 'diverged') {
          const master = err.details.master as Position | undefined;
          return {
            kind: 'diverged',
            divergence: { forkTxid: verdict.forkTxid ?? 0, transactions: verdict.transactions ?? 0, masterUrl: this.upstream.url, masterEpoch: master?.epoch },
          };
        }
        return { kind: 'snapshot' };
      }
      throw this.explain(err);
    }
    const res = opened.body;
    // A master of an older release names no format and ignores ours. Its records would read as
    // damaged and cost the copy; this way the copy keeps serving until both sides match.
    if (opened.format !== String(RECORD_FORMAT)) {
      res.destroy();
      throw new Error(`the master sends record format ${opened.format ?? '2 or older'}, this replica reads ${RECORD_FORMAT}: run the same version on master and replicas`);
    }
    if (opened.epoch < timeline.highestSeen) {
      res.destroy();
      throw new UpstreamError(`${this.upstream.url} is a master of epoch ${opened.epoch}, but epoch ${timeline.highestSeen} exists: it is a stale master, and this replica will not follow it`);
    }
    if (opened.history) timeline.adopt(opened.history);
    this.fastAcks = opened.sync;
    if (opened.advertiseUrl) this.hooks.onMasterAdvertised(opened.advertiseUrl, opened.nodeId);
    this.connected = true;
    this.lastContactMs = Date.now();
    this.log.info({ from: pos.txid, master: this.upstream.url }, 'following the master');
    const framer = new RecordFramer(MAX_RECORD_BYTES);
    // Heartbeats come every 500 ms; a stream without a complete record for longer than the
    // timeout is dead or wedged (a damaged length prefix waits for bytes that never come).
    const timeoutMs = this.opts.heartbeatTimeoutMs ?? 3000;
    const abort = this.abort;
    const watchdog = setInterval(() => {
      if (Date.now() - (this.lastContactMs ?? 0) > timeoutMs) abort.abort(new Error(`no complete record for ${timeoutMs} ms`));
    }, Math.min(500, timeoutMs));
    watchdog.unref();
    try {
      await new Promise<void>((resolve, reject) => {
        // 'data' events rather than an async iterator: records reach the queue in the callback
        // that brought their bytes, one promise hop less per chunk.
        res.on('data', (chunk: Buffer) => {
          try {
            this.takeRecords(framer.push(chunk));
          } catch (err) {
            res.destroy(err as Error);
          }
        });
        finished(res, (err) => (err ? reject(err) : resolve()));
      });
    } finally {
      clearInterval(watchdog);
      this.connected = false;
    }
    // Apply what arrived before the end, so a restart of the master loses nothing here.
    this.applyQueued();
    return { kind: 'ended' };
  }

  /**
   * Why the upstream would not stream, in words an operator can act on. A node that is not the
   * master may name the one it follows: then this replica follows that one.
   */
  private explain(refusal: UpstreamRefusal): Error {
    const upstream = this.upstream.url;
    const d = refusal.details;
    if (refusal.code === 'NOT_MASTER') {
      if (this.opts.instanceId !== undefined && d.instance_id === this.opts.instanceId) return new UpstreamError(`NEBULAGC_MASTER_URL (${upstream}) points at this node itself: point it at the master`);
      const named = typeof d.master_url === 'string' ? d.master_url : undefined;
      if (named && named !== upstream && d.master_url !== this.opts.advertiseUrl) {
        this.log.warn({ upstream, role: d.ha_state, master: named }, `${upstream} is not the master (${String(d.ha_state)}); following the master it names, ${named}`);
        this.hooks.onRedirected(named);
        return new Error(`${upstream} is not the master; now following ${named}`);
      }
      return new UpstreamError(`${upstream} is not the master (${String(d.ha_state ?? 'unknown state')}) and knows no master to name: point NEBULAGC_MASTER_URL at the master`);
    }
    if (refusal.code === 'SECRET_MISMATCH') return new UpstreamError(`${upstream} uses another NEBULAGC_HMAC_SECRET than this replica: tokens it signs would fail here with 401. Use the same secret on every node`);
    return refusal;
  }

  private peer(): Peer {
    return {
      replicaId: this.opts.replicaId,
      replicaUrl: this.opts.advertiseUrl,
      secretFp: this.opts.secretFingerprint,
      seenEpoch: this.opts.timeline.highestSeen,
      candidate: this.opts.candidate,
      instanceId: this.opts.instanceId,
    };
  }

  private takeRecords(records: Buffer[]): void {
    for (const buf of records) {
      this.lastContactMs = Date.now();
      const r = decodeRecord(buf);
      if (r.epoch < this.opts.timeline.highestSeen) {
        throw new StaleEpochError(`a record of epoch ${r.epoch} (txid ${r.txid}) arrived, but epoch ${this.opts.timeline.highestSeen} exists: refused, it comes from a fenced master`);
      }
      if (r.type === RECORD_TX) {
        this.queue.push(r);
        this.queueBytes += buf.length;
        this.masterPosition = { epoch: r.epoch, txid: r.txid, checksum: r.checksum };
        this.masterCommitTimeMs = r.commitTimeMs;
      } else if (r.type === RECORD_HEARTBEAT) {
        this.masterPosition = { epoch: r.epoch, txid: r.txid, checksum: r.checksum };
        this.hooks.onHeartbeat(r.masterTimeMs, performance.timeOrigin + performance.now());
        // Replaying from a position file older than the file should meet a record's checksum
        // on the way; reaching the master's newest without one means the file holds something
        // the master never wrote.
        if (this.queue.length === 0 && this.applier?.isRecovering && this.applier.position.txid >= r.txid) {
          throw new ApplyError(`the copy matches no checksum of the master's up to txid ${r.txid}`);
        }
      }
    }
    if (this.queue.length > 0) this.scheduleApply();
  }

  /** Group commit: everything that arrived before the next turn of the event loop goes in one batch. */
  private scheduleApply(): void {
    if (this.applyScheduled) return;
    this.applyScheduled = true;
    setImmediate(() => {
      this.applyScheduled = false;
      try {
        this.applyQueued();
      } catch (err) {
        // Stop serving this copy and break the stream: follow() resyncs from a snapshot.
        this.log.error({ err: (err as Error).message, position: this.position }, 'replication apply failed: the copy will resync from a snapshot');
        this.hooks.onStreamError(err);
        this.closeCopy('broken', (err as Error).message);
        this.abort?.abort(err);
      }
    });
  }

  private applyQueued(): void {
    if (this.queue.length === 0 || !this.applier) return;
    const batch = this.queue;
    const bytes = this.queueBytes;
    this.queue = [];
    this.queueBytes = 0;
    const wasRecovering = this.applier.isRecovering;
    const pos = this.applier.apply(batch);
    if (wasRecovering && !this.applier.isRecovering) {
      this.log.info({ position: pos }, 'replica copy verified again: its checksum matches the master\'s');
      this.hooks.onCopyChanged(true);
      this.setPhase('following', 'the copy’s checksum met the master’s again');
    }
    const commitTimesMs = batch.map((r) => r.commitTimeMs);
    this.hooks.onApplied(pos, batch.length, bytes, commitTimesMs);
    if (this.hooks.onDurable) this.notDurable.push({ lastTxid: pos.txid, commitTimesMs });
    this.releaseWaiters(pos.txid);
    this.makeDurable(this.applier);
  }

  /**
   * One fdatasync at a time on the thread pool while the event loop applies the next batches;
   * when it returns, everything applied before it started is acknowledged, and the next sync
   * takes whatever came meanwhile (the group commit of the disk).
   */
  private makeDurable(applier: Applier): void {
    if (this.syncing) return;
    this.syncing = true;
    applier
      .makeDurable()
      .then(
        (pos) => {
          if (applier !== this.applier) return;
          this.reportDurable(pos);
          this.scheduleAck();
          this.checkpointIfDue(applier);
        },
        (err: unknown) => {
          // A sync that fails leaves the disk in an unknown state (Linux may have dropped the
          // dirty pages): nothing more may be acknowledged from this copy.
          if (applier !== this.applier) return;
          this.log.error({ err: (err as Error).message, position: applier.position }, 'could not sync the copy to disk: it will resync from a snapshot');
          this.hooks.onStreamError(err);
          this.closeCopy('broken', (err as Error).message);
          this.abort?.abort(err);
        },
      )
      .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'reporting a durable position failed'))
      .finally(() => {
        this.syncing = false;
        if (applier === this.applier && applier.position !== applier.durablePosition) this.makeDurable(applier);
      });
  }

  private reportDurable(pos: Position): void {
    if (!this.hooks.onDurable) return;
    const times: number[] = [];
    while (this.notDurable.length > 0 && this.notDurable[0]!.lastTxid <= pos.txid) times.push(...this.notDurable.shift()!.commitTimesMs);
    this.hooks.onDurable(pos, times);
  }

  /** After a batch is durable and acknowledged, so the checkpoint delays neither. */
  private checkpointIfDue(applier: Applier): void {
    if (!applier.checkpointDue || this.checkpointScheduled) return;
    this.checkpointScheduled = true;
    applier
      .checkpoint()
      .catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'checkpoint of the copy failed; will retry'))
      .finally(() => (this.checkpointScheduled = false));
  }

  private releaseWaiters(txid: number): void {
    if (this.waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.txid <= txid) {
        clearTimeout(w.timer);
        w.resolve(true);
      } else still.push(w);
    }
    this.waiters = still;
  }

  /**
   * Acknowledges the durable position to the master, at most one request in flight. With an
   * asynchronous master, one per ACK_INTERVAL_MS: acks then only feed its view of its replicas
   * (lag in /cluster/replicas and metrics); each is a whole HTTP request on both sides, and at
   * 20 ms they were most of both processes' event-loop stalls at 1,000 commits/s
   * (docs/BENCHMARKS.md, Replication lag). A master with NEBULAGC_SYNC_REPLICAS holds its answers for them, so
   * then each goes as soon as a batch is durable (and the one in flight carries the batches
   * that become durable meanwhile to the next).
   */
  private scheduleAck(): void {
    if (this.ackTimer || this.ackInFlight) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      const pos = this.durablePosition;
      if (!pos) return;
      this.ackInFlight = true;
      this.upstream
        .ack(this.opts.replicaId, pos, this.opts.timeline.highestSeen)
        .catch((err: unknown) => this.log.debug({ err: (err as Error).message }, 'ack failed'))
        .finally(() => {
          this.ackInFlight = false;
          if (this.durablePosition && this.durablePosition.txid !== pos.txid) this.scheduleAck();
        });
    }, this.fastAcks ? 0 : ACK_INTERVAL_MS);
    this.ackTimer.unref();
  }

  private closeCopy(phase: ReplicaPhase, reason: string): void {
    this.setPhase(phase, reason);
    this.queue = [];
    this.queueBytes = 0;
    this.notDurable = [];
    if (this.applier) {
      this.hooks.onCopyChanged(false);
      this.retire(this.applier);
      this.applier = undefined;
    }
  }

  private retire(applier: Applier): void {
    this.closing = Promise.all([this.closing, applier.close()]).then(() => undefined);
  }

  private async takeSnapshot(): Promise<void> {
    this.abort = new AbortController();
    let snap;
    try {
      snap = await downloadSnapshot(await this.upstream.snapshot(this.peer(), this.abort.signal), this.opts.dbPath, this.log);
    } catch (err) {
      throw err instanceof UpstreamRefusal ? this.explain(err) : err;
    }
    if (snap.position.epoch < this.opts.timeline.highestSeen) {
      rmSync(snap.file, { force: true });
      throw new StaleEpochError(`${this.upstream.url} served a snapshot of epoch ${snap.position.epoch}, but epoch ${this.opts.timeline.highestSeen} exists: refused, it is a fenced master`);
    }
    // Only a verified file replaces the copy; the old one served until this moment.
    this.closeCopy('bootstrapping', 'the copy was closed to take a snapshot');
    await this.closing;
    installSnapshot(snap, this.opts.dbPath);
    this.applier = Applier.fromSnapshot(this.opts.dbPath, this.stateFile, this.warn, snap.checksum, snap.position);
    this.masterPosition ??= snap.position;
    this.hooks.onCopyChanged(true);
    this.hooks.onApplied(snap.position, 0, 0, []);
    this.hooks.onDurable?.(snap.position, []);
    this.releaseWaiters(snap.position.txid);
    this.scheduleAck();
    this.log.info({ position: snap.position }, 'snapshot installed');
    this.setPhase('following', 'a snapshot was installed');
  }
}

/** The upstream is not a master this replica can follow; retrying helps only once an operator acts. */
export class UpstreamError extends Error {}

/** Where a replica keeps its position, beside the database. */
export const replicaPositionFile = (dir: string): string => path.join(dir, 'replica.position');

