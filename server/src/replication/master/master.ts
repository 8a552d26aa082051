import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { openDatabase, type Db, type Synchronous } from '../../db/connection.js';
import type { Writer } from '../../db/writer.js';
import type { Logger } from '../../log.js';
import { BackgroundCheckpointer, FINAL_STEP_PAGES, MAX_BACKGROUND_PASSES } from '../background-checkpointer.js';
import { WalCapture, type CapturedTx } from './capture.js';
import { ReplicationLog } from './replication-log.js';
import { PageImages } from '../wire/page-delta.js';
import { encodeHeartbeat, encodeTxInto, txRecordBytes, type Position } from '../wire/record.js';
import { locate, type EpochStart, type PositionVerdict } from '../../ha/timeline.js';

/**
 * Memory for the images pages are diffed against. A control plane's database is mostly a few
 * hot pages (the nodes table, its indexes, page 1); a page not kept goes whole.
 */
const DELTA_IMAGES_BYTES = 16 * 1024 * 1024;

export interface MasterOptions {
  dbPath: string;
  dir: string;
  log: { maxBytes: number; maxAgeMs: number; memoryBytes: number };
  walCheckpointBytes: number;
  /** The epoch this master writes in; every record carries it. */
  epoch: number;
  /**
   * Where a promoted replica's history stands: txids continue from it. The log, which may hold
   * records from an earlier time as master, starts over there. Undefined: continue the log.
   */
  startAt?: Position;
  /** The cluster's epoch history, to tell replicas on it from diverged ones. */
  history: () => readonly EpochStart[];
  /** The writer's setting, for the checkpoint thread's connection (its fsyncs follow it). */
  synchronous?: Synchronous;
  captureIntervalMs?: number;
  heartbeatIntervalMs?: number;
}

/** A replica as the master sees it: from its stream connection and its acknowledgements. */
export interface ReplicaView {
  id: string;
  /** The replica's process; a forgotten replica's process stays out of the sync set. */
  instanceId: string | undefined;
  /** Whether its acknowledgements count toward NEBULAGC_SYNC_REPLICAS. */
  syncEligible: boolean;
  url: string | undefined;
  /** Whether it may be promoted (NEBULAGC_CANDIDATE on the replica). */
  candidate: boolean;
  connected: boolean;
  connectedAt: number | undefined;
  sentTxid: number;
  ackedTxid: number;
  ackedChecksum: string | undefined;
  lastAckAt: number | undefined;
}

export interface Snapshot {
  /** A read-only connection inside the read transaction that holds the image; close it after. */
  db: Db;
  position: Position;
  pageCount: number;
  pageSize: number;
}

export interface Subscriber {
  /** Called when records past this subscriber's position exist; it pulls them from the log. */
  wake(): void;
  /** The master is closing: send what is queued, then end the stream. */
  end(): void;
}

export interface MasterEvents {
  onTransactions?(txs: CapturedTx[]): void;
  /** A replica acknowledged a durable position. */
  onAck?(): void;
}

/**
 * The master's side of replication: captures each commit's WAL frames, appends them to the
 * log, and wakes the stream subscribers. It owns the WAL's checkpoints (autocheckpoint is off)
 * and the durable epoch.
 */
export class ReplicationMaster {
  readonly log: ReplicationLog;
  readonly capture: WalCapture;
  readonly replicas = new Map<string, ReplicaView>();
  /** Replicas an operator forgot, with the process that was connected then. */
  private readonly forgotten = new Map<string, string | undefined>();
  private readonly subscribers = new Set<Subscriber>();
  private readonly pins: [Db, Db];
  private readonly timers: NodeJS.Timeout[] = [];
  private closed = false;
  private readonly unhookCommit: () => void;
  private lastRecordAt = Date.now();
  /** Commits happened that no capture has read yet; a setImmediate will. */
  private captureDue = false;
  private checkpointDue = false;
  private readonly background: BackgroundCheckpointer | undefined;
  /** The pages' images as of the last transaction logged, to send the next ones as deltas. */
  private readonly images: PageImages;
  readonly events: MasterEvents = {};

  constructor(
    writer: Writer,
    private readonly opts: MasterOptions,
    private readonly logger: Logger,
  ) {
    mkdirSync(opts.dir, { recursive: true });
    writer.db.pragma('wal_autocheckpoint = 0');
    // Checkpoints (ours, or Litestream's) do not truncate the WAL; this bounds what a big
    // transaction leaves behind when the WAL starts over.
    writer.db.pragma(`journal_size_limit = ${Math.max(2 * opts.walCheckpointBytes, 4 * 1024 * 1024)}`);
    this.log = new ReplicationLog(path.join(opts.dir, 'log'), { ...opts.log, segmentBytes: 16 * 1024 * 1024 });
    this.pins = [openDatabase(opts.dbPath, { readonly: true }), openDatabase(opts.dbPath, { readonly: true })];
    const start = opts.startAt;
    if (start && (this.log.last?.txid !== start.txid || this.log.last.checksum !== start.checksum)) this.log.reset();
    this.capture = new WalCapture(writer.db, { dbPath: opts.dbPath, pins: this.pins, epoch: opts.epoch, resumeFrom: start ?? this.log.last });
    this.images = new PageImages(this.capture.pageSize, Math.max(64, Math.floor(DELTA_IMAGES_BYTES / this.capture.pageSize)));
    if (this.capture.recovery) {
      logger.warn(
        { log_txid: this.log.last?.txid, pages: this.capture.recovery.pages.length },
        'database is ahead of the replication log (a crash before the log was written?); shipping the WAL pages as one transaction',
      );
      this.publish([this.capture.recovery]);
      this.log.flush();
    } else if (this.capture.historyBroken) {
      logger.warn(
        { log_txid: this.log.last?.txid, log_checksum: this.log.last?.checksum, db_checksum: this.capture.position.checksum },
        'database does not match the replication log (changed while the server was down?); replicas will resync from a snapshot',
      );
      this.log.reset();
    }
    writer.setLockWait({
      quickMs: 20,
      patienceMs: 5000,
      beforeWait: () => {
        this.publish(this.capture.releasePins());
        this.log.flush();
      },
      afterAcquire: () => this.publish(this.capture.capture()),
    });
    this.unhookCommit = writer.onCommit(() => this.commitSeen());
    if (opts.walCheckpointBytes > 0) this.background = new BackgroundCheckpointer(opts.dbPath, opts.synchronous ?? 'FULL');
    this.log.onFlushed = () => this.wakeAll();
    logger.info({ position: this.position }, 'replication master ready');
  }

  /** The newest position captured (commits of this turn of the event loop may not be in it yet). */
  get position(): Position {
    return this.capture.position;
  }

  /** The newest position, capturing first if commits are waiting for their capture. */
  positionNow(): Position {
    if (this.captureDue) this.captureNow();
    return this.capture.position;
  }

  /** A WAL checkpoint is due or under way (on the checkpoint thread, then here). */
  get checkpointing(): boolean {
    return this.checkpointDue;
  }

  start(): void {
    const every = (ms: number, fn: () => void): void => {
      const t = setInterval(() => {
        try {
          fn();
        } catch (err) {
          this.logger.error({ err }, 'replication timer failed');
        }
      }, ms);
      t.unref();
      this.timers.push(t);
    };
    // Other processes (litestream, the CLI, the sqlite3 shell) write too; catch their commits.
    every(this.opts.captureIntervalMs ?? 50, () => this.captureNow());
    // Lets other processes' checkpoints (Litestream's) copy what has been captured. When they
    // own the checkpoints, more often: a RESTART waits (Litestream's busy timeout, 1 s) for every
    // reader to have begun after its copy, and a pin moved once a second could miss that window,
    // leaving the WAL unrestarted and Litestream checkpointing again at every sync.
    every(this.opts.walCheckpointBytes > 0 ? 1000 : 200, () => this.publish(this.capture.refreshPin()));
    // Often, so each pass drops few segments.
    every(1000, () => {
      this.log.trim().catch((err: unknown) => this.logger.warn({ err: (err as Error).message }, 'could not delete an old replication log segment'));
    });
    every(this.opts.heartbeatIntervalMs ?? 500, () => {
      if (Date.now() - this.lastRecordAt >= (this.opts.heartbeatIntervalMs ?? 500)) this.wakeAll();
    });
  }

  /** Captures, logs and ships everything committed so far. */
  captureNow(): void {
    this.captureDue = false;
    this.publish(this.capture.capture());
    this.log.flush();
    this.capture.paceWalSync();
    const threshold = this.opts.walCheckpointBytes;
    if (threshold > 0 && !this.checkpointDue && this.capture.uncheckpointedBytes >= threshold) {
      this.checkpointDue = true;
      // After this turn's records have gone out to the streams (their writes run first).
      setImmediate(this.checkpointSoon);
    }
  }

  /**
   * A commit marks the capture as due; one capture per turn of the event loop then reads every
   * commit of that turn at once. The stream could not send anything before the turn ends
   * anyway. Whatever needs the newest position before then (write responses' txid, the write
   * lock wait, snapshots, close) reads `position` or calls captureNow(), which capture first.
   */
  private commitSeen(): void {
    this.capture.noteCommit(performance.timeOrigin + performance.now());
    if (this.captureDue) return;
    this.captureDue = true;
    setImmediate(this.captureSoon);
  }

  private readonly captureSoon = (): void => {
    if (!this.captureDue || this.closed) return;
    this.guarded(() => this.captureNow());
  };

  /**
   * The bulk of the copy runs on the checkpoint thread, bounded by a pin moved up to everything
   * captured; then checkpointWal() copies the few frames written meanwhile and restarts the WAL.
   */
  private readonly checkpointSoon = (): void => {
    // Still due while it runs: its own capture must not schedule another one.
    if (this.closed) return;
    if (this.background) this.backgroundPass(this.background, 1);
    else this.finishCheckpoint();
  };

  /** One pass on the checkpoint thread; then another, or the step's end here (see MAX_BACKGROUND_PASSES). */
  private backgroundPass(background: BackgroundCheckpointer, pass: number): void {
    this.guarded(() => {
      this.publish(this.capture.refreshPin());
      this.log.flush();
    });
    background.passive().then(
      (r) =>
        setImmediate(() => {
          let again = false;
          this.guarded(() => {
            if (this.closed) return;
            this.captureNow();
            const left = this.capture.walFrames - r.checkpointed;
            again = r.busy === 0 && pass < MAX_BACKGROUND_PASSES && left > FINAL_STEP_PAGES;
          });
          if (again) this.backgroundPass(background, pass + 1);
          else this.finishCheckpoint();
        }),
      (err: unknown) => {
        this.logger.warn({ err: (err as Error).message }, 'background WAL checkpoint failed; checkpointing on the event loop');
        setImmediate(this.finishCheckpoint);
      },
    );
  }

  private readonly finishCheckpoint = (): void => {
    if (!this.closed) this.guarded(() => this.checkpointWal());
    this.checkpointDue = false;
  };

  private guarded(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.logger.error({ err }, 'replication capture failed');
    }
  }

  /** A heartbeat record carrying the master's position and clock. */
  heartbeat(): Buffer {
    return encodeHeartbeat({ ...this.positionNow(), masterTimeMs: performance.timeOrigin + performance.now() });
  }

  subscribe(s: Subscriber): () => void {
    this.subscribers.add(s);
    return () => this.subscribers.delete(s);
  }

  /** Where in the log a copy whose checksum is `checksum` sits (a restored backup), while the log reaches back that far. */
  findPosition(checksum: string): Position | undefined {
    this.captureNow();
    // The head first: a copy of an idle master's database is the head, whose record a log
    // started since (a restart, a reset) may not hold.
    const head = this.capture.position;
    return head.checksum === checksum ? head : this.log.positionWithChecksum(checksum);
  }

  /** Where a peer's position stands against our history: resume, snapshot, diverged, or a newer epoch than ours. */
  locate(pos: Position): PositionVerdict {
    return locate(pos, this.positionNow(), this.opts.history(), this.log);
  }

  replicaConnected(id: string, url: string | undefined, from: number, candidate: boolean, instanceId: string | undefined): ReplicaView {
    const forgotten = this.forgotten.has(id) && this.forgotten.get(id) === instanceId;
    if (!forgotten) this.forgotten.delete(id);
    const view = this.replicas.get(id) ?? {
      id,
      instanceId,
      syncEligible: !forgotten,
      url,
      candidate,
      connected: true,
      connectedAt: Date.now(),
      sentTxid: from,
      ackedTxid: from,
      ackedChecksum: undefined,
      lastAckAt: undefined,
    };
    Object.assign(view, { url: url ?? view.url, candidate, instanceId, syncEligible: !forgotten, connected: true, connectedAt: Date.now(), sentTxid: from });
    this.replicas.set(id, view);
    return view;
  }

  /** Forgets a replica (its stream, if open, ends). */
  forget(id: string): boolean {
    const view = this.replicas.get(id);
    if (!view) return false;
    // Until this process of the replica restarts, its reconnections do not count for sync.
    this.forgotten.set(id, view.instanceId);
    this.replicas.delete(id);
    this.wakeAll();
    return true;
  }

  ack(id: string, pos: Position): void {
    const view = this.replicas.get(id);
    if (!view) return;
    if (pos.txid >= view.ackedTxid) {
      view.ackedTxid = pos.txid;
      view.ackedChecksum = pos.checksum;
    }
    view.lastAckAt = Date.now();
    this.events.onAck?.();
  }

  /**
   * Opens a consistent page image and its exact position: under the write lock, capture what
   * is committed and start a read transaction on a fresh connection, so no commit falls
   * between the two.
   */
  openSnapshot(writer: Writer): Snapshot {
    const db = openDatabase(this.opts.dbPath, { readonly: true });
    try {
      let position!: Position;
      let pageCount = 0;
      writer.underLock('replication.snapshot', () => {
        this.captureNow();
        position = this.capture.position;
        db.exec('BEGIN');
        pageCount = db.pragma('page_count', { simple: true }) as number;
      });
      return { db, position, pageCount, pageSize: this.capture.pageSize };
    } catch (err) {
      db.close();
      throw err;
    }
  }

  get connectedReplicas(): number {
    let n = 0;
    for (const r of this.replicas.values()) if (r.connected) n++;
    return n;
  }

  /**
   * Captures and logs what is committed, ends every stream once it has sent all of it, and lets
   * go of the files. Returns the final position: the database's, exactly.
   */
  async close(): Promise<Position> {
    for (const t of this.timers) clearInterval(t);
    this.captureNow();
    this.wakeAll();
    for (const s of this.subscribers) s.end();
    this.closed = true;
    this.unhookCommit();
    const final = this.capture.position;
    this.log.close();
    this.capture.close();
    for (const p of this.pins) p.close();
    await this.background?.close();
    return final;
  }

  private publish(txs: CapturedTx[]): void {
    if (txs.length === 0) return;
    for (const tx of txs) {
      if (tx.resync) this.logger.warn({ txid: tx.txid, pages: tx.pages.length }, 'WAL frames were checkpointed unseen; shipped the difference');
      const plan = this.images.plan(tx.pages, tx.dbSize);
      this.log.append(tx, encodeTxInto(tx, this.log.reserve(txRecordBytes(tx, plan)), plan));
    }
    this.lastRecordAt = Date.now();
    this.events.onTransactions?.(txs);
  }

  private wakeAll(): void {
    for (const s of this.subscribers) s.wake();
  }

  /**
   * Checkpoints in small steps (every NEBULAGC_WAL_CHECKPOINT_BYTES of captured frames), so
   * each costs a short fsync rather than a long stall. Only what is in the log may leave the
   * WAL: a crash must find the rest still there.
   */
  private checkpointWal(): void {
    this.captureNow();
    const { captured, complete } = this.capture.checkpoint();
    this.publish(captured);
    this.log.flush();
    if (!complete) this.logger.debug('WAL checkpoint incomplete (a reader or writer was busy); will retry');
  }
}
