import { statSync } from 'node:fs';
import type { LitestreamSupervisor } from '../backup/litestream-process.js';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Writer } from '../db/writer.js';
import type { HeartbeatCoalescer } from '../domain/heartbeats.js';
import type { HaRole } from '../ha/role.js';
import { HA_STATES } from '../ha/states.js';
import type { VersionWaiters } from './blocking/version-waiters.js';
import type { ElectionStatus } from '../ha/elector.js';
import { DeferredCounter, DeferredHistogram, type CountHandle } from './deferred-metrics.js';

export interface MetricSources {
  dbPath: string;
  writer: Writer;
}

function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/**
 * One registry per server instance (so several servers in one test process never share
 * counters). The nebulagc_ha_* names are the ones the HA guide's dashboards and alerts use.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly httpRequests = new Counter({
    name: 'nebulagc_http_requests_total',
    help: 'HTTP requests by method, matched route and status',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [this.registry],
  });

  readonly httpDuration = new Histogram({
    name: 'nebulagc_http_request_duration_seconds',
    help: 'HTTP request duration by method and matched route',
    labelNames: ['method', 'route'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });

  readonly rateLimited = new Counter({
    name: 'nebulagc_rate_limited_total',
    help: 'Requests refused by a rate limit, by scope (ip, node, cluster)',
    labelNames: ['scope'] as const,
    registers: [this.registry],
  });

  readonly dbWrites = new Counter({
    name: 'nebulagc_db_write_transactions_total',
    help: 'Committed write transactions, by operation',
    labelNames: ['op'] as const,
    registers: [this.registry],
  });

  readonly dbWriteDuration = new Histogram({
    name: 'nebulagc_db_write_duration_seconds',
    help: 'Time spent inside write transactions, commit included',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
    registers: [this.registry],
  });

  readonly haTransitions = new Counter({
    name: 'nebulagc_ha_state_transitions_total',
    help: 'HA state changes, by from_state and to_state (see the state table in docs/HA.md)',
    labelNames: ['from_state', 'to_state'] as const,
    registers: [this.registry],
  });

  readonly haSyncDegraded = new Gauge({
    name: 'nebulagc_ha_sync_degraded',
    help: '1 while a master with NEBULAGC_SYNC_MODE=degrade answers writes without waiting for replicas',
    registers: [this.registry],
  });

  readonly haSyncWait = new Histogram({
    name: 'nebulagc_ha_sync_wait_seconds',
    help: 'How long write answers waited for replicas to acknowledge them (NEBULAGC_SYNC_REPLICAS)',
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
    registers: [this.registry],
  });

  readonly haQuarantined = new Counter({
    name: 'nebulagc_ha_quarantined_transactions_total',
    help: 'Transactions of a diverged copy (an old master’s unreplicated writes) kept in quarantine before a resync',
    registers: [this.registry],
  });

  readonly haHeartbeatErrors = new Counter({
    name: 'nebulagc_ha_heartbeat_errors_total',
    help: 'Replication heartbeats missed or failed',
    registers: [this.registry],
  });

  readonly haLastHeartbeat = new Gauge({
    name: 'nebulagc_ha_last_heartbeat',
    help: 'Unix time of the last replication heartbeat; 0 until one arrives',
    registers: [this.registry],
  });

  readonly replicationClockSkew = new Gauge({
    name: 'nebulagc_replication_heartbeat_delay_seconds',
    help: 'On a replica: arrival time of the last stream heartbeat minus the master clock in it (network delay plus clock skew)',
    registers: [this.registry],
  });

  readonly replicationBytes = new Counter({
    name: 'nebulagc_replication_bytes_total',
    help: 'Replication bytes (records and snapshots), by direction (sent on a master, received on a replica)',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });

  /** nebulagc_replication_bytes_total, added to per record: through handles (see deferred-metrics.ts). */
  readonly replicationBytesSent: CountHandle;
  readonly replicationBytesReceived: CountHandle;

  readonly replicationTransactions = new Counter({
    name: 'nebulagc_replication_transactions_total',
    help: 'Transactions captured (master) or applied (replica)',
    registers: [this.registry],
  });

  readonly replicationBatchSize = new Histogram({
    name: 'nebulagc_replication_apply_batch_transactions',
    help: 'Transactions per group-committed apply batch on a replica',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024],
    registers: [this.registry],
  });

  readonly replicationApplyLag = new Histogram({
    name: 'nebulagc_replication_apply_lag_seconds',
    help: 'On a replica: from the master committing a transaction to readers of this replica seeing it (same-machine clocks are exact; across machines it includes clock skew)',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5],
    registers: [this.registry],
  });

  readonly replicationDurableLag = new Histogram({
    name: 'nebulagc_replication_durable_lag_seconds',
    help: 'On a replica: from the master committing a transaction to this replica having it on disk, pages and position, and acknowledgeable',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5],
    registers: [this.registry],
  });

  readonly replicationSnapshots = new Counter({
    name: 'nebulagc_replication_snapshots_total',
    help: 'Snapshots installed by this replica',
    registers: [this.registry],
  });

  readonly replicationPosition = new Gauge({
    name: 'nebulagc_replication_position_txid',
    help: 'Last transaction captured (master) or durably applied (replica)',
    registers: [this.registry],
  });

  readonly lighthouseRestarts = new Counter({
    name: 'nebulagc_lighthouse_restarts_total',
    help: 'Built-in lighthouse processes restarted after they exited on their own',
    registers: [this.registry],
  });

  private readonly writer: Writer;

  constructor(sources: MetricSources) {
    const { dbPath, writer } = sources;
    this.writer = writer;
    const replicationBytes = new DeferredCounter(this.replicationBytes);
    this.replicationBytesSent = replicationBytes.handle({ direction: 'sent' });
    this.replicationBytesReceived = replicationBytes.handle({ direction: 'received' });
    collectDefaultMetrics({ register: this.registry, prefix: 'nebulagc_' });
    new Gauge({
      name: 'nebulagc_db_size_bytes',
      help: 'Size of the main database file',
      registers: [this.registry],
      collect() {
        this.set(fileSize(dbPath));
      },
    });
    new Gauge({
      name: 'nebulagc_db_wal_size_bytes',
      help: 'Size of the write-ahead log',
      registers: [this.registry],
      collect() {
        this.set(fileSize(`${dbPath}-wal`));
      },
    });
    new Gauge({
      name: 'nebulagc_db_writable',
      help: '1 when the writer accepts writes',
      registers: [this.registry],
      collect() {
        this.set(writer.writable ? 1 : 0);
      },
    });
    // Every commit passes here: counted through handles (see deferred-metrics.ts).
    const writes = new DeferredCounter(this.dbWrites);
    const byOp = new Map<string, CountHandle>();
    const duration = new DeferredHistogram(this.dbWriteDuration).handle({});
    writer.onCommit((info) => {
      let count = byOp.get(info.label);
      if (!count) byOp.set(info.label, (count = writes.handle({ op: info.label })));
      count.inc();
      duration.observe(info.durationMs / 1000);
    });
  }

  /** Built-in lighthouse processes running on this server, read at scrape time. */
  watchLighthouses(running: () => number): void {
    new Gauge({
      name: 'nebulagc_lighthouses_running',
      help: 'Built-in lighthouse (nebula) processes running on this server',
      registers: [this.registry],
      collect() {
        this.set(running());
      },
    });
  }

  /** Gauges read at scrape time from the heartbeat coalescer and the HA role. */
  /** Managed Litestream: up, last upload, errors (NEBULAGC_LITESTREAM_URL). */
  watchBackup(backup: LitestreamSupervisor): void {
    const registers = [this.registry];
    new Gauge({
      name: 'nebulagc_backup_up',
      help: 'Managed Litestream: 1 while it runs (on the master), else 0',
      registers,
      collect() {
        this.set(backup.running ? 1 : 0);
      },
    });
    new Gauge({
      name: 'nebulagc_backup_last_success_timestamp_seconds',
      help: 'Managed Litestream: unix time of the last upload it finished (a WAL segment or a snapshot) since this process started; 0 before the first',
      registers,
      collect() {
        this.set(backup.lastSuccessSeconds);
      },
    });
    new Counter({
      name: 'nebulagc_backup_errors_total',
      help: 'Managed Litestream: errors it logged (an unreachable endpoint, refused credentials) and exits it was restarted after',
      registers,
      collect() {
        this.reset();
        this.inc(backup.errors);
      },
    });
  }

  watch({ heartbeats, role, waiters }: { heartbeats: HeartbeatCoalescer; role: HaRole; waiters: VersionWaiters }): void {
    const registers = [this.registry];
    new Gauge({
      name: 'nebulagc_blocking_polls_held',
      help: 'Blocking config polls (GET /api/v1/config/version?index=) held open right now',
      registers,
      collect() {
        this.set(waiters.held);
      },
    });
    new Counter({
      name: 'nebulagc_heartbeats_received_total',
      help: 'Node heartbeats accepted into the coalescer',
      registers,
      collect() {
        this.reset();
        this.inc(heartbeats.stats.received);
      },
    });
    new Counter({
      name: 'nebulagc_heartbeat_flushes_total',
      help: 'Batches of coalesced heartbeats written (or, on a replica, forwarded to the master)',
      registers,
      collect() {
        this.reset();
        this.inc(heartbeats.stats.flushes);
      },
    });
    new Gauge({
      name: 'nebulagc_heartbeats_pending',
      help: 'Nodes with a heartbeat not yet flushed',
      registers,
      collect() {
        this.set(heartbeats.pendingCount);
      },
    });
    const writer = this.writer;
    new Gauge({
      name: 'nebulagc_ha_is_master',
      help: '1 when this node may take writes (a master or standalone node not fenced), else 0',
      registers,
      collect() {
        this.set(role.takesWrites && writer.writable ? 1 : 0);
      },
    });
    new Gauge({
      name: 'nebulagc_ha_epoch',
      help: 'The newest epoch this node knows of (it grows at every promotion)',
      registers,
      collect() {
        this.set(role.epoch);
      },
    });
    new Gauge({
      name: 'nebulagc_ha_state',
      help: '1 for the HA state this node is in (label state), 0 for the others',
      labelNames: ['state'] as const,
      registers,
      collect() {
        for (const s of HA_STATES) this.set({ state: s }, role.state === s ? 1 : 0);
      },
    });
    const election = (): ElectionStatus | undefined => role.election?.();
    new Gauge({
      name: 'nebulagc_ha_coordinator_up',
      help: 'auto mode: 1 while the coordinator answers this node, 0 during an outage (absent in static modes)',
      registers,
      collect() {
        this.reset();
        const e = election();
        if (e) this.set(e.coordinator_reachable ? 1 : 0);
      },
    });
    new Counter({
      name: 'nebulagc_ha_lock_renewal_errors_total',
      help: 'auto mode: renewals of the leader lock that failed (the lock may still be held until its TTL)',
      registers,
      collect() {
        this.reset();
        this.inc(election()?.lock_renewal_errors ?? 0);
      },
    });
    new Gauge({
      name: 'nebulagc_ha_lock_held',
      help: 'auto mode: 1 while this node holds the leader lock',
      registers,
      collect() {
        this.set(election()?.lock_held ? 1 : 0);
      },
    });
    new Gauge({
      name: 'nebulagc_ha_failsafe_active',
      help: 'auto mode with NEBULAGC_FAILSAFE: 1 while this master writes without a fresh lock because every member answered it',
      registers,
      collect() {
        this.set(election()?.failsafe_active ? 1 : 0);
      },
    });
    new Gauge({
      name: 'nebulagc_ha_replicas_total',
      help: 'Replicas connected to this master',
      registers,
      collect() {
        this.set(role.master?.connectedReplicas ?? 0);
      },
    });
    new Gauge({
      name: 'nebulagc_ha_heartbeat_duration_seconds',
      help: 'Replica lag as of the replication stream (0 on a master or standalone node)',
      registers,
      collect() {
        const ms = role.replica ? role.lag().ms : 0;
        this.set(Number.isFinite(ms) ? ms / 1000 : -1);
      },
    });
    const lagBytes = new Gauge({
      name: 'nebulagc_replication_replica_lag_bytes',
      help: 'Per replica, on the master: record bytes not yet acknowledged',
      labelNames: ['replica'] as const,
      registers: [],
    });
    const lagSeconds = new Gauge({
      name: 'nebulagc_replication_replica_lag_seconds',
      help: 'Per replica (on the master) or for this replica: age of the oldest transaction not yet applied; -1 when unknown',
      labelNames: ['replica'] as const,
      registers: [],
    });
    // One collect fills all three lag gauges; the other two are registered after it.
    new Gauge({
      name: 'nebulagc_replication_replica_lag_transactions',
      help: 'Per replica (on the master) or for this replica: transactions behind the master',
      labelNames: ['replica'] as const,
      registers,
      collect() {
        this.reset();
        lagBytes.reset();
        lagSeconds.reset();
        for (const r of role.replicas()) {
          this.set({ replica: r.id }, r.lag.transactions);
          lagBytes.set({ replica: r.id }, r.lag.bytes);
          lagSeconds.set({ replica: r.id }, r.lag.ms / 1000);
        }
        if (role.replica) {
          const lag = role.lag();
          this.set({ replica: role.replica.id }, lag.transactions);
          lagSeconds.set({ replica: role.replica.id }, Number.isFinite(lag.ms) ? lag.ms / 1000 : -1);
        }
      },
    });
    this.registry.registerMetric(lagBytes);
    this.registry.registerMetric(lagSeconds);
  }
}
