import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { openDatabase, type Db, type Synchronous } from '../db/connection.js';
import type { Writer } from '../db/writer.js';
import type { Logger } from '../log.js';
import { BackgroundCheckpointer, FINAL_STEP_PAGES, MAX_BACKGROUND_PASSES } from './background-checkpointer.js';
import { WalCapture, type CapturedTx } from './capture.js';
import { ReplicationLog } from './log.js';
import { PageImages } from './page-delta.js';
import { encodeHeartbeat, encodeTxInto, txRecordBytes, type Position } from './record.js';

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
  /** The writer's setting, for the checkpoint thread's connection (its fsyncs follow it). */
  synchronous?: Synchronous;
  captureIntervalMs?: number;
  heartbeatIntervalMs?: number;
}

/** A replica as the master sees it: from its stream connection and its acknowledgements. */
export interface ReplicaView {
  id: string;
  url: string | undefined;
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
}

export interface MasterEvents {
  onTransactions?(txs: CapturedTx[]): void;
  onRecordBytes?(bytes: number): void;
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
  private readonly subscribers = new Set<Subscriber>();
  private readonly pins: [Db, Db];
  private readonly timers: NodeJS.Timeout[] = [];
  private closed = false;
  private readonly stateFile: string;
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
    this.stateFile = path.join(opts.dir, 'master.json');
    const epoch = this.readEpoch();
    writer.db.pragma('wal_autocheckpoint = 0');
    // Our checkpoints do not truncate the WAL; this bounds what a big transaction leaves behind.
    if (opts.walCheckpointBytes > 0) writer.db.pragma(`journal_size_limit = ${Math.max(2 * opts.walCheckpointBytes, 4 * 1024 * 1024)}`);
    this.log = new ReplicationLog(path.join(opts.dir, 'log'), { ...opts.log, segmentBytes: 16 * 1024 * 1024 });
    this.pins = [openDatabase(opts.dbPath, { readonly: true }), openDatabase(opts.dbPath, { readonly: true })];
    this.capture = new WalCapture(writer.db, { dbPath: opts.dbPath, pins: this.pins, epoch, resumeFrom: this.log.last });
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
    writer.onCommit(() => this.commitSeen());
    if (opts.walCheckpointBytes > 0) this.background = new BackgroundCheckpointer(opts.dbPath, opts.synchronous ?? 'FULL');
    this.log.onFlushed = () => this.wakeAll();
    logger.info({ position: this.position }, 'replication master ready');
  }

  /** The newest position: captures first if commits are waiting for their capture. */
  get position(): Position {
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
    // Lets other processes' checkpoints (Litestream's) copy what has been captured.
    every(1000, () => this.publish(this.capture.refreshPin()));
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
    return encodeHeartbeat({ ...this.position, masterTimeMs: performance.timeOrigin + performance.now() });
  }

  subscribe(s: Subscriber): () => void {
    this.subscribers.add(s);
    return () => this.subscribers.delete(s);
  }

  /** Whether a replica at this position is on our history (and the log can serve it). */
  validatePosition(pos: { txid: number; checksum: string; epoch: number }): 'ok' | 'snapshot' {
    const here = this.position;
    if (pos.epoch > here.epoch || pos.txid > here.txid) return 'snapshot';
    if (pos.txid === here.txid) return pos.checksum === here.checksum ? 'ok' : 'snapshot';
    return this.log.covers(pos.txid) && this.log.checksumAt(pos.txid) === pos.checksum ? 'ok' : 'snapshot';
  }

  replicaConnected(id: string, url: string | undefined, from: number): ReplicaView {
    const view = this.replicas.get(id) ?? {
      id,
      url,
      connected: true,
      connectedAt: Date.now(),
      sentTxid: from,
      ackedTxid: from,
      ackedChecksum: undefined,
      lastAckAt: undefined,
    };
    Object.assign(view, { url: url ?? view.url, connected: true, connectedAt: Date.now(), sentTxid: from });
    this.replicas.set(id, view);
    return view;
  }

  ack(id: string, pos: Position): void {
    const view = this.replicas.get(id);
    if (!view) return;
    if (pos.txid >= view.ackedTxid) {
      view.ackedTxid = pos.txid;
      view.ackedChecksum = pos.checksum;
    }
    view.lastAckAt = Date.now();
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
      writer.write('replication.snapshot', () => {
        this.captureNow();
        position = this.position;
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

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.captureNow();
    this.closed = true;
    this.log.close();
    this.capture.close();
    for (const p of this.pins) p.close();
    await this.background?.close();
  }

  private publish(txs: CapturedTx[]): void {
    if (txs.length === 0) return;
    let bytes = 0;
    for (const tx of txs) {
      if (tx.resync) this.logger.warn({ txid: tx.txid, pages: tx.pages.length }, 'WAL frames were checkpointed unseen; shipped the difference');
      const plan = this.images.plan(tx.pages, tx.dbSize);
      const buf = encodeTxInto(tx, this.log.reserve(txRecordBytes(tx, plan)), plan);
      bytes += buf.length;
      this.log.append(tx, buf);
    }
    this.lastRecordAt = Date.now();
    this.events.onTransactions?.(txs);
    this.events.onRecordBytes?.(bytes);
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

  private readEpoch(): number {
    try {
      const state = JSON.parse(readFileSync(this.stateFile, 'utf8')) as { epoch?: unknown };
      if (typeof state.epoch === 'number' && Number.isInteger(state.epoch) && state.epoch > 0) return state.epoch;
    } catch {
      // No state yet: a new master starts at epoch 1.
    }
    writeFileSync(this.stateFile, JSON.stringify({ epoch: 1 }), { mode: 0o600 });
    return 1;
  }
}
