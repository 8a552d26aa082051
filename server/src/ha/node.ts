import { createHmac, randomUUID } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import type { Config } from '../config.js';
import type { NodeStore } from '../db/open-store.js';
import type { MigrationResult } from '../db/migrations.js';
import { DomainError } from '../domain/errors.js';
import type { Metrics } from '../http/metrics.js';
import type { Logger } from '../log.js';
import { checksumPages } from '../replication/wire/checksum.js';
import { readAllPages } from '../replication/db-pages.js';
import { HttpUpstream } from '../replication/wire/http-upstream.js';
import { InternalClient } from '../replication/wire/internal-client.js';
import { PATHS } from '../replication/wire/protocol.js';
import { lastLoggedPosition } from '../replication/master/replication-log.js';
import { ReplicationMaster } from '../replication/master/master.js';
import type { Position } from '../replication/wire/record.js';
import { PositionFile } from '../replication/replica/position-file.js';
import { ReplicationReplica, replicaPositionFile, type ReplicaPhase } from '../replication/replica/replica.js';
import { openDatabase } from '../db/connection.js';
import { backupDir, writeBackupFile } from './backup-file.js';
import { keepDivergedCopy, recordDiff } from './quarantine.js';
import { SyncGate } from './semisync.js';
import type { HaRole } from './role.js';
import { WriterLock } from './writer-lock.js';
import { Elector } from './elector.js';
import { coordinatorFor } from './election/from-config.js';
import path from 'node:path';

export interface HaNodeOptions {
  config: Config;
  log: Logger;
  metrics: Metrics;
  nodes: NodeStore;
  role: HaRole;
  /** Where replication keeps its log, timeline and position files. */
  dir: string;
  /** A replica applied a batch (or installed a snapshot): caches and blocking polls look again. */
  onReplicaApplied(): void;
  /** Resolves once nothing writes for this node as master any more (the backup uploader has stopped). */
  masterWorkStopped?(): Promise<void>;
}

export interface PromoteRequest {
  force?: boolean;
  /** A switchover's fenced master position: wait (bounded) until this copy holds exactly it. */
  expect?: Position;
  timeoutMs?: number;
}

export interface Handover {
  node_id: string;
  url: string;
  epoch: number;
  position: Position;
}

/** Identifies an HMAC secret without revealing it, so master and replicas can compare theirs. */
export const secretFingerprint = (secret: string): string =>
  createHmac('sha256', secret).update('nebulagc secret fingerprint v1').digest('hex').slice(0, 16);

const REPLICA_STATE: Record<ReplicaPhase, 'replica.bootstrapping' | 'replica.recovering' | 'replica.following' | 'replica.broken'> = {
  bootstrapping: 'replica.bootstrapping',
  recovering: 'replica.recovering',
  following: 'replica.following',
  broken: 'replica.broken',
};

/**
 * Composes this node's parts for its role, and changes role at runtime: promote, demote,
 * switchover and fencing, each a transition of the state machine. One operation runs at a time.
 * An election (a coordinator lock) calls the same methods a person does through the API.
 */
export class HaNode {
  private lock: WriterLock | undefined;
  private busy: string | undefined;
  private elector: Elector | undefined;
  /** Replicas this node, no longer master, has answered with the master's URL. */
  private readonly redirected = new Set<string>();
  readonly fingerprint: string;
  /** This process, as told apart from any other (node ids may repeat: the default is the hostname). */
  readonly instanceId = randomUUID();

  constructor(
    private readonly o: HaNodeOptions,
    hmacSecret: string,
  ) {
    this.fingerprint = secretFingerprint(hmacSecret);
  }

  get role(): HaRole {
    return this.o.role;
  }

  /** Opens the node in its configured role. Returns the migration when this node opened the writer. */
  async start(): Promise<MigrationResult | undefined> {
    const { config } = this.o;
    if (config.haMode === 'standalone') {
      this.lock = WriterLock.acquire(config.dbPath, { nodeId: config.nodeId });
      const migration = this.o.nodes.openForWrites(config.dbPath, config.synchronous);
      this.role.machine.to('standalone');
      return migration;
    }
    if (config.haMode === 'master') {
      const live = await this.liveMasterElsewhere();
      if (!live) return this.openMaster();
      this.o.log.warn(
        { master: live },
        `NEBULAGC_HA_MODE=master, but this node handed over to ${live}, which is master now: following it instead of starting a second master (make this node master again with a switchover)`,
      );
      this.role.setKnownMaster(live, undefined);
      this.followUpstream(live);
      return undefined;
    }
    if (config.haMode === 'auto') return this.startElected();
    this.adoptOwnPosition();
    this.followUpstream(config.replication.masterUrl!);
    return undefined;
  }

  /** NEBULAGC_HA_MODE=auto: the coordinator's election decides the first role, then keeps it in step. */
  private async startElected(): Promise<MigrationResult | undefined> {
    const { config, log } = this.o;
    const auto = config.ha.auto!;
    const elector = new Elector(
      this,
      coordinatorFor(auto),
      {
        nodeId: config.nodeId,
        candidate: config.ha.candidate,
        maxLagOnFailover: auto.maxLagOnFailover,
        priority: auto.priority,
        failsafe: auto.failsafe,
        syncReplicas: config.ha.sync.replicas,
      },
      log.child({ component: 'election' }),
    );
    this.elector = elector;
    this.role.writeLease = () => elector.writeAllowed();
    this.role.election = () => elector.status();
    const decision = await elector.start(this.ownTxid());
    let migration: MigrationResult | undefined;
    if (decision.kind === 'master') migration = await this.openMaster(decision.epoch);
    else {
      this.adoptOwnPosition();
      this.role.setKnownMaster(decision.holder.url, decision.holder.nodeId);
      this.followUpstream(decision.holder.url);
    }
    elector.run();
    return migration;
  }

  /** The txid of the copy on disk, for the election before anything is open. */
  private ownTxid(): number {
    if (this.role.timeline.role === 'master') return lastLoggedPosition(path.join(this.o.dir, 'log'))?.txid ?? 0;
    return readPosition(this.o.dir)?.txid ?? 0;
  }

  /** The elector won the lock: promote now, on the coordinator's epoch. */
  promoteElected(epoch: number): Promise<void> {
    return this.exclusive('promote', async () => {
      const replica = this.role.replica;
      if (!replica?.position) throw new DomainError('NOT_CAUGHT_UP', 'this replica has no copy of the database to promote');
      this.role.machine.to('promoting', `elected (epoch ${epoch})`);
      const previousUpstream = replica.upstreamUrl;
      await this.stopFollowing();
      try {
        await this.openMaster(epoch);
      } catch (err) {
        this.o.log.error({ err: (err as Error).message }, 'promotion failed; following the master again');
        this.followUpstream(previousUpstream);
        throw err;
      }
    });
  }

  /** The elector saw another holder: a master demotes to it, a replica follows it. */
  follow(url: string, nodeId: string): Promise<void> {
    return this.exclusive('demote', async () => this.demoteNow(url, nodeId));
  }

  /** A replica becomes master, on a new epoch, with txids continuing from its copy. */
  promote(req: PromoteRequest): Promise<Handover> {
    return this.exclusive('promote', async () => {
      const { role } = this;
      const replica = role.replica;
      if (!replica || role.mode !== 'replica') throw new DomainError('CONFLICT', `this node is not a replica (${role.state})`);
      if (req.expect) {
        const reached = await replica.waitFor(req.expect.txid, req.timeoutMs ?? this.o.config.ha.switchoverTimeoutMs);
        const at = replica.position;
        if (!reached || !at || at.txid !== req.expect.txid || at.checksum !== req.expect.checksum) {
          throw new DomainError('NOT_CAUGHT_UP', `this replica is at ${at ? `txid ${at.txid}` : 'no copy'}, the master at txid ${req.expect.txid}`, {
            position: at ?? null,
            expected: req.expect,
          });
        }
      } else if (!req.force) {
        const refusal = promotionRefusal(replica.hasCopy ? replica.position : undefined, replica.masterPosition);
        if (refusal) throw refusal;
      }
      if (!replica.position) throw new DomainError('NOT_CAUGHT_UP', 'this replica has no copy of the database to promote');
      role.machine.to('promoting', req.expect ? 'switchover' : req.force ? 'promote (forced)' : 'promote');
      const previousUpstream = replica.upstreamUrl;
      await this.stopFollowing();
      try {
        await this.openMaster();
      } catch (err) {
        this.o.log.error({ err: (err as Error).message }, 'promotion failed; following the master again');
        this.followUpstream(previousUpstream);
        throw err;
      }
      return this.handover();
    });
  }

  /**
   * A master becomes a replica of `masterUrl` (a replica just follows it instead). Writes stop
   * first; the streams end once they have sent everything; the copy resumes from exactly the
   * position this node wrote last, so if the new master's history holds it, no snapshot is needed.
   */
  demote(masterUrl: string, nodeId?: string): Promise<void> {
    return this.exclusive('demote', async () => this.demoteNow(masterUrl, nodeId));
  }

  private async demoteNow(masterUrl: string, nodeId: string | undefined): Promise<void> {
    const { role, nodes, log } = { ...this.o, role: this.role };
    const url = masterUrl.replace(/\/+$/, '');
    if (url === role.selfUrl) throw new DomainError('VALIDATION_FAILED', 'master_url is this node itself');
    if (role.mode === 'replica' && role.replica) {
      role.setKnownMaster(url, nodeId);
      role.timeline.setRole('replica', url);
      role.replica.retarget(this.upstreamFor(url));
      log.info({ master: url }, 'following another master');
      return;
    }
    const master = role.master;
    if (!master) throw new DomainError('CONFLICT', `this node cannot be demoted (${role.state})`);
    role.setKnownMaster(url, nodeId);
    role.machine.to('demoting', `demote: following ${url}`);
    nodes.store.writer.refuse('this node is becoming a replica');
    await this.masterWorkStopped();
    const final = await master.close();
    role.master = undefined;
    this.closeSync();
    nodes.closeForWrites('this node is a replica; writes go to the master');
    this.lock?.release();
    this.lock = undefined;
    writePosition(this.o.dir, final);
    log.info({ position: final, master: url }, 'demoted: following the new master from this copy');
    this.followUpstream(url);
  }

  /**
   * A planned handover: fence writes, wait until the target holds everything, promote it, and
   * follow it. Without `to`, the most caught-up connected candidate is chosen.
   */
  switchover(to: string | undefined): Promise<Handover> {
    return this.exclusive('switchover', async () => {
      const { role, log } = { ...this.o, role: this.role };
      const master = role.master;
      if (!master || role.state !== 'master.serving') throw new DomainError('CONFLICT', `only a serving master can switch over (this node is ${role.state})`);
      if (this.elector) return this.switchoverElected(master, to);
      const target = this.pickTarget(master, to);
      const timeoutMs = this.o.config.ha.switchoverTimeoutMs;
      role.machine.to('master.fenced', `switchover to ${target.id}`);
      this.o.nodes.store.writer.refuse('switchover in progress');
      await this.masterWorkStopped();
      const head = master.positionNow();
      // Give every replica the last records before the streams end, so each can resume on the
      // new master without a snapshot.
      await waitUntil(() => [...master.replicas.values()].every((r) => !r.connected || r.sentTxid >= head.txid), Math.min(1000, timeoutMs));
      const client = this.clientFor(target.url!);
      let reply;
      try {
        reply = await client.json('POST', PATHS.promote, { expect: head, timeout_ms: timeoutMs }, timeoutMs + 2000);
      } catch (err) {
        reply = { status: 0, body: { error: (err as Error).message } };
      } finally {
        client.close();
      }
      if (reply.status !== 200) {
        const promoted = await this.promotedAnyway(target.url!);
        if (!promoted) {
          this.o.nodes.store.writer.allow();
          role.machine.to('master.serving', `switchover to ${target.id} failed`);
          log.error({ target: target.id, status: reply.status, answer: reply.body }, 'switchover failed: writes resume here');
          throw new DomainError('NOT_CAUGHT_UP', `the target ${target.id} did not take over: ${JSON.stringify(reply.body)}`, { target: target.id });
        }
        reply = { status: 200, body: promoted };
      }
      const handover = reply.body as Handover;
      await this.demoteNow(handover.url, handover.node_id);
      log.info({ to: handover.node_id, epoch: handover.epoch, position: handover.position }, 'switchover done');
      return handover;
    });
  }

  /**
   * Auto mode: the lock passes to the target through the coordinator (a handover note names it,
   * so the other candidates stand back), and this node follows whoever takes it.
   */
  private async switchoverElected(master: ReplicationMaster, to: string | undefined): Promise<Handover> {
    const elector = this.elector!;
    const target = this.pickTarget(master, to);
    if (!target.candidate) throw new DomainError('NO_CANDIDATE', `replica ${target.id} is not a candidate (NEBULAGC_CANDIDATE=false): it never runs for master`);
    const timeoutMs = this.o.config.ha.switchoverTimeoutMs;
    const head = master.positionNow();
    await elector.handOver(target.id, () => (master.replicas.get(target.id)?.ackedTxid ?? -1) >= master.positionNow().txid, timeoutMs);
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      const h = elector.holder;
      if (h && h.nodeId !== this.role.nodeId) {
        await this.demoteNow(h.url, h.nodeId);
        elector.handOverEnded();
        this.o.log.info({ to: h.nodeId, epoch: h.epoch }, 'switchover done');
        return { node_id: h.nodeId, url: h.url, epoch: h.epoch, position: head };
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    elector.handOverEnded();
    throw new DomainError('NOT_CAUGHT_UP', `${target.id} did not take the lock within ${timeoutMs} ms; this node runs again`, { target: target.id });
  }

  /** Resolves once nothing uploads for this node as master (the backup), before another may take over. */
  masterWorkStopped(): Promise<void> {
    return this.o.masterWorkStopped?.() ?? Promise.resolve();
  }

  /** A fence the election set is lifted once the lock is fresh again, unless a newer epoch exists. */
  unfence(reason: string): boolean {
    const { role } = this;
    const master = role.master;
    if (role.state !== 'master.fenced' || !master || this.busy) return false;
    if (role.timeline.highestSeen > master.position.epoch) return false;
    this.o.nodes.store.writer.allow();
    role.machine.to('master.serving', reason);
    this.o.log.warn({ reason }, 'unfenced: this master takes writes again');
    return true;
  }

  /** Failsafe: asks a member whether it still follows this master. */
  async failsafePing(url: string, timeoutMs: number): Promise<boolean> {
    const client = this.clientFor(url);
    try {
      const r = await client.json('POST', PATHS.failsafe, { node_id: this.role.nodeId, epoch: this.role.epoch }, timeoutMs);
      return r.status === 200;
    } catch {
      return false;
    } finally {
      client.close();
    }
  }

  /** A master's failsafe round reached this replica: true when it follows that master. */
  noteFailsafe(fromNodeId: string): boolean {
    return this.elector?.noteFailsafe(fromNodeId) ?? false;
  }

  /** A master that hears of a higher epoch is stale: it stops taking writes at once. */
  fence(reason: string): void {
    const { role } = this;
    if (role.state !== 'master.serving') return;
    this.o.nodes.store.writer.refuse(reason);
    role.machine.to('master.fenced', reason);
    this.o.log.error({ reason }, 'fenced: this master takes no writes');
  }

  /**
   * SIGTERM on a master with a caught-up candidate replica hands over first, so clients wait
   * for a switchover instead of an election or an operator.
   */
  async handOverBeforeExit(): Promise<void> {
    const master = this.role.master;
    if (!master || this.role.state !== 'master.serving') return;
    const head = master.positionNow().txid;
    if (this.elector) {
      const target = [...master.replicas.values()].some((r) => r.connected && r.candidate && r.url) ? this.pickTarget(master, undefined) : undefined;
      if (target) await this.elector.handOver(target.id, () => (master.replicas.get(target.id)?.ackedTxid ?? -1) >= head, 2000);
      return;
    }
    const connected = [...master.replicas.values()].filter((r) => r.connected);
    if (!connected.some((r) => r.candidate && r.url && head - r.ackedTxid <= 1000)) return;
    let to: Handover;
    try {
      to = await this.switchover(undefined);
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'no handover before exit');
      return;
    }
    // The other replicas reconnect here and are told the new master's URL; once this process
    // is gone they could not learn it. Bounded: a replica that does not come back is not waited for.
    const others = connected.map((r) => r.id).filter((id) => id !== to.node_id);
    this.redirected.clear();
    await waitUntil(() => others.every((id) => this.redirected.has(id)), 3000);
  }

  /** A replica asked this node (not master) to stream, and was told where the master is. */
  noteRedirected(replicaId: string): void {
    this.redirected.add(replicaId);
  }

  /**
   * Writes a consistent copy of the database beside it, with the position it holds: on a
   * master, the image a snapshot would serve; on a replica, its copy as readers see it now.
   */
  async backup(): Promise<{ path: string; position: Position; bytes: number }> {
    const { config } = this.o;
    const { role } = this;
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    let db;
    let position: Position;
    if (role.master) {
      const snap = role.master.openSnapshot(this.o.nodes.store.writer);
      db = snap.db;
      position = snap.position;
    } else {
      if (role.replica && !role.replica.hasCopy) throw new DomainError('NOT_READY', 'this replica has no verified copy to back up');
      db = openDatabase(config.dbPath, { readonly: true });
      // The applier runs on this thread: no transaction lands between these two lines.
      db.exec('BEGIN');
      db.prepare('SELECT count(*) FROM sqlite_master').get();
      position = role.replica?.position ?? { epoch: 0, txid: 0, checksum: '' };
    }
    try {
      const file = path.join(backupDir(config.dbPath), `nebulagc-${stamp}-txid${position.txid}.db`);
      const { bytes, checksum } = writeBackupFile(db, file);
      this.o.log.info({ path: file, position, bytes }, 'wrote a backup file');
      return { path: file, position: { ...position, checksum }, bytes };
    } finally {
      if (db.inTransaction) db.exec('ROLLBACK');
      db.close();
    }
  }

  async close(): Promise<void> {
    const { role } = this;
    await this.elector?.close();
    if (role.master) {
      await role.master.close();
      role.master = undefined;
    }
    this.closeSync();
    await this.stopFollowing();
    this.lock?.release();
    this.lock = undefined;
    if (role.state !== 'stopped') role.machine.to('stopped');
  }

  private closeSync(): void {
    this.role.sync?.close();
    this.role.sync = undefined;
    this.o.metrics.haSyncDegraded.set(0);
  }

  private async exclusive<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy) throw new DomainError('HA_BUSY', `a ${this.busy} is under way on this node`);
    this.busy = what;
    try {
      return await fn();
    } finally {
      this.busy = undefined;
    }
  }

  private handover(): Handover {
    const pos = this.role.master!.positionNow();
    return { node_id: this.role.nodeId, url: this.role.selfUrl, epoch: pos.epoch, position: pos };
  }

  private pickTarget(master: ReplicationMaster, to: string | undefined): { id: string; url: string; candidate: boolean } {
    const views = [...master.replicas.values()];
    if (to !== undefined) {
      const v = views.find((r) => r.id === to);
      if (!v) throw new DomainError('NOT_FOUND', `no replica ${to} is known to this master`);
      if (!v.connected || !v.url) throw new DomainError('NO_CANDIDATE', `replica ${to} is not connected`);
      return { id: v.id, url: v.url, candidate: v.candidate };
    }
    const best = views
      .filter((r) => r.connected && r.candidate && r.url)
      .sort((a, b) => b.ackedTxid - a.ackedTxid || b.sentTxid - a.sentTxid || a.id.localeCompare(b.id))[0];
    if (!best) throw new DomainError('NO_CANDIDATE', 'no connected candidate replica to hand over to');
    return { id: best.id, url: best.url!, candidate: true };
  }

  /** After an unclear answer (a timeout), whether the target took over all the same. */
  private async promotedAnyway(url: string): Promise<Handover | undefined> {
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) });
      const h = (await res.json()) as { ha_state?: string; node_id?: string; position?: Position };
      if (h.ha_state?.startsWith('master') && h.position && h.position.epoch > (this.role.master?.position.epoch ?? 0)) {
        return { node_id: h.node_id ?? '', url, epoch: h.position.epoch, position: h.position };
      }
    } catch {
      // Unreachable: it did not take over.
    }
    return undefined;
  }

  /**
   * Takes the writer lock, opens the writer, and starts replication as master. A node that
   * was master last time continues its epoch and log; any other begins a new epoch, with txids
   * continuing from its copy's position.
   */
  private async openMaster(electedEpoch?: number): Promise<MigrationResult> {
    const { config, nodes, log, metrics } = this.o;
    const { role } = this;
    const timeline = role.timeline;
    this.lock ??= WriterLock.acquire(config.dbPath, { nodeId: config.nodeId });
    let migration: MigrationResult;
    try {
      migration = nodes.openForWrites(config.dbPath, config.synchronous);
    } catch (err) {
      this.lock.release();
      this.lock = undefined;
      throw err;
    }
    const wasMaster = timeline.role === 'master' && timeline.epoch > 0;
    const startAt = wasMaster ? undefined : readPosition(this.o.dir);
    // An elected master takes the coordinator's epoch (its lock's), unless this node has seen a
    // higher one (a coordinator rebuilt from nothing): epochs never go back.
    const epoch = electedEpoch !== undefined ? Math.max(electedEpoch, timeline.highestSeen + 1) : wasMaster ? timeline.epoch : timeline.highestSeen + 1;
    const continuing = wasMaster && epoch === timeline.epoch;
    const master = new ReplicationMaster(
      nodes.store.writer,
      {
        dbPath: config.dbPath,
        dir: this.o.dir,
        log: config.replication.log,
        walCheckpointBytes: config.replication.walCheckpointBytes,
        synchronous: config.synchronous,
        epoch,
        startAt,
        history: () => timeline.history,
      },
      log,
    );
    if (!continuing) {
      const at = master.position;
      timeline.beginEpoch(epoch, { txid: at.txid, checksum: at.checksum });
      log.info({ epoch, txid: at.txid }, 'began a new epoch');
    }
    // A master keeps no replica position: a stale one would be taken for the copy's later.
    rmSync(replicaPositionFile(this.o.dir), { force: true });
    master.events.onTransactions = (txs) => {
      metrics.replicationTransactions.inc(txs.length);
      metrics.replicationPosition.set(txs[txs.length - 1]!.txid);
    };
    const sync = config.ha.sync;
    if (sync.replicas > 0) {
      const gate = new SyncGate(
        sync,
        () => [...master.replicas.values()].map((v) => ({ ackedTxid: v.ackedTxid, counts: v.syncEligible })),
        log.child({ component: 'sync' }),
        (degraded) => metrics.haSyncDegraded.set(degraded ? 1 : 0),
      );
      master.events.onAck = () => gate.acked(master.position.txid);
      role.sync = gate;
    }
    master.start();
    role.master = master;
    role.knownMaster = undefined;
    role.machine.to('master.serving');
    // It was fenced before it stopped: a newer epoch exists, and a restart does not undo that.
    if (timeline.highestSeen > epoch) this.fence(`epoch ${timeline.highestSeen} exists, newer than this master's ${epoch}: it was fenced before it stopped`);
    return migration;
  }

  /** Follows `url` with a replica of the local copy (or none yet: it takes a snapshot). */
  private followUpstream(url: string): void {
    const { config, log, metrics, nodes } = this.o;
    const { role } = this;
    role.timeline.setRole('replica', url);
    nodes.readFrom(undefined);
    const replica = new ReplicationReplica(
      this.upstreamFor(url),
      {
        dbPath: config.dbPath,
        dir: this.o.dir,
        replicaId: config.nodeId,
        advertiseUrl: role.selfUrl,
        secretFingerprint: this.fingerprint,
        instanceId: this.instanceId,
        candidate: config.ha.candidate,
        timeline: role.timeline,
      },
      {
        onCopyChanged: (available) => nodes.readFrom(available ? config.dbPath : undefined),
        onApplied: (_pos, txs, bytes, commitTimesMs) => {
          this.o.onReplicaApplied();
          const now = performance.timeOrigin + performance.now();
          for (const t of commitTimesMs) metrics.replicationApplyLag.observe(Math.max(0, now - t) / 1000);
          metrics.replicationTransactions.inc(txs);
          metrics.replicationBytesReceived.inc(bytes);
          if (txs > 0) metrics.replicationBatchSize.observe(txs);
          else metrics.replicationSnapshots.inc();
        },
        onDurable: (pos, commitTimesMs) => {
          const now = performance.timeOrigin + performance.now();
          for (const t of commitTimesMs) metrics.replicationDurableLag.observe(Math.max(0, now - t) / 1000);
          metrics.replicationPosition.set(pos.txid);
        },
        onHeartbeat: (masterTimeMs, receivedAtMs) => {
          metrics.haLastHeartbeat.set(Math.floor(receivedAtMs / 1000));
          metrics.replicationClockSkew.set((receivedAtMs - masterTimeMs) / 1000);
        },
        onStreamError: () => metrics.haHeartbeatErrors.inc(),
        onMasterAdvertised: (masterUrl, nodeId) => role.setKnownMaster(masterUrl, nodeId),
        // A replica being stopped for a promotion no longer speaks for the node.
        onPhase: (phase, reason) => {
          if (role.replica === replica && role.mode === 'replica' && role.state !== 'promoting') role.machine.to(REPLICA_STATE[phase], reason);
        },
        onRedirected: (masterUrl) => {
          role.setKnownMaster(masterUrl, undefined);
          role.timeline.setRole('replica', masterUrl);
          role.replica?.retarget(this.upstreamFor(masterUrl));
        },
        onDiverged: async (position, d) => {
          const meta = await keepDivergedCopy({ dbPath: config.dbPath, position, forkTxid: d.forkTxid, masterUrl: d.masterUrl, masterEpoch: d.masterEpoch });
          role.quarantinedTransactions += d.transactions;
          metrics.haQuarantined.inc(d.transactions);
          log.error({ quarantine_id: meta.id, diverged_transactions: d.transactions, fork_txid: d.forkTxid }, `kept ${d.transactions} diverged transaction(s) in quarantine ${meta.id}: see nebulagc-server quarantine show ${meta.id}`);
          return () => {
            const done = recordDiff(config.dbPath, meta.id, config.dbPath);
            log.warn({ quarantine_id: meta.id, changes: done.changes, diff_error: done.diff_error }, 'quarantine diff recorded');
          };
        },
      },
      log.child({ component: 'replica' }),
    );
    role.replica = replica;
    if (!role.knownMaster) role.setKnownMaster(url, undefined);
    role.machine.to(REPLICA_STATE[replica.phase], `following ${url}`);
    replica.start();
  }

  private async stopFollowing(): Promise<void> {
    const replica = this.role.replica;
    if (!replica) return;
    await replica.stop();
    this.role.replica = undefined;
    this.o.nodes.readFrom(undefined);
  }

  private clientFor(url: string): InternalClient {
    const { config } = this.o;
    return new InternalClient({ baseUrl: url, secret: config.replication.secret!, tls: config.tls });
  }

  private upstreamFor(url: string): HttpUpstream {
    return new HttpUpstream(this.clientFor(url));
  }

  /**
   * A node configured as master whose last role was replica: if the master it followed is alive
   * and serving, this node was demoted (a switchover, a SIGTERM handover), and starting as
   * master would make two. Unreachable, it is the runbook's promotion of a replica: go ahead.
   */
  private async liveMasterElsewhere(): Promise<string | undefined> {
    const { timeline } = this.role;
    const url = timeline.masterUrl;
    if (timeline.role !== 'replica' || !url || url === this.role.selfUrl) return undefined;
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) });
      const h = (await res.json()) as { ha_state?: string; epoch?: number };
      return h.ha_state === 'master.serving' && (h.epoch ?? 0) >= timeline.highestSeen ? url : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * A node that was master last time and now starts as a replica (the runbook after a failover)
   * has a stale replica position file, or none: its copy's position is where its log ends. A
   * database ahead of its log (writes the log lost in a crash) is put one past it, so the new
   * master sees a branch of its own and the copy goes to quarantine, not silently away.
   */
  private adoptOwnPosition(): void {
    const { role } = this;
    if (role.timeline.role !== 'master') return;
    const { config, log } = this.o;
    const logged = lastLoggedPosition(path.join(this.o.dir, 'log'));
    if (!logged || !existsSync(config.dbPath)) {
      rmSync(replicaPositionFile(this.o.dir), { force: true });
      return;
    }
    const checksum = fileChecksum(config.dbPath);
    const pos = checksum === logged.checksum ? logged : { epoch: logged.epoch, txid: logged.txid + 1, checksum };
    writePosition(this.o.dir, pos);
    log.info({ position: pos, ahead_of_log: pos !== logged }, 'this node was master: its copy continues from where its log ends');
  }
}

/**
 * Why a replica may not be promoted without force: it holds less than it last heard the master
 * had (the gap would be lost), or it cannot tell (no verified copy, or no master heard since it
 * started). Undefined when it is caught up.
 */
export function promotionRefusal(at: Position | undefined, heard: Position | undefined): DomainError | undefined {
  if (at && heard && at.txid >= heard.txid) return undefined;
  const gap = at && heard ? heard.txid - at.txid : null;
  return new DomainError(
    'NOT_CAUGHT_UP',
    at && heard
      ? `this replica is ${gap} transaction(s) behind what it last heard the master had (txid ${at.txid} of ${heard.txid}); promoting it would lose them. Pass force to promote anyway`
      : 'this replica has not heard from a master since it started, or has no verified copy: it cannot show it is caught up. Pass force to promote anyway',
    { position: at ?? null, master_position: heard ?? null, gap },
  );
}

function fileChecksum(dbPath: string): string {
  const db = openDatabase(dbPath, { readonly: true });
  try {
    db.exec('BEGIN');
    return checksumPages(db.pragma('page_size', { simple: true }) as number, readAllPages(db)).value;
  } finally {
    db.close();
  }
}

function readPosition(dir: string): Position | undefined {
  const file = replicaPositionFile(dir);
  if (!existsSync(file)) return undefined;
  const f = new PositionFile(file);
  try {
    return f.read();
  } finally {
    f.close();
  }
}

/** Replaces the replica position file with `pos` (a new file: no older slot survives). */
function writePosition(dir: string, pos: Position): void {
  const file = replicaPositionFile(dir);
  rmSync(file, { force: true });
  const f = new PositionFile(file);
  f.write(pos);
  f.close();
}

async function waitUntil(done: () => boolean, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() >= until) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}
