import { statSync } from 'node:fs';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Writer } from '../db/writer.js';
import type { HeartbeatCoalescer } from '../domain/heartbeats.js';

export interface MetricSources {
  dbPath: string;
  writer: Writer;
  heartbeats: HeartbeatCoalescer;
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

  readonly haIsMaster = new Gauge({
    name: 'nebulagc_ha_is_master',
    help: '1 when this node may take writes (master or standalone), else 0',
    registers: [this.registry],
  });

  readonly haReplicas = new Gauge({
    name: 'nebulagc_ha_replicas_total',
    help: 'Replicas connected to this master',
    registers: [this.registry],
  });

  readonly haTransitions = new Counter({
    name: 'nebulagc_ha_state_transitions_total',
    help: 'HA role changes, by from_state and to_state',
    labelNames: ['from_state', 'to_state'] as const,
    registers: [this.registry],
  });

  readonly haHeartbeatErrors = new Counter({
    name: 'nebulagc_ha_heartbeat_errors_total',
    help: 'Replication heartbeats missed or failed',
    registers: [this.registry],
  });

  readonly haHeartbeatDuration = new Gauge({
    name: 'nebulagc_ha_heartbeat_duration_seconds',
    help: 'Age of the replication stream as of the last heartbeat (replica lag); 0 on a master or standalone',
    registers: [this.registry],
  });

  readonly haLastHeartbeat = new Gauge({
    name: 'nebulagc_ha_last_heartbeat',
    help: 'Unix time of the last replication heartbeat; 0 until one arrives',
    registers: [this.registry],
  });

  constructor(sources: MetricSources) {
    const { dbPath, writer, heartbeats } = sources;
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
    new Counter({
      name: 'nebulagc_heartbeats_received_total',
      help: 'Node heartbeats accepted into the coalescer',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(heartbeats.stats.received);
      },
    });
    new Counter({
      name: 'nebulagc_heartbeat_flushes_total',
      help: 'Write transactions that flushed coalesced heartbeats',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(heartbeats.stats.flushes);
      },
    });
    new Gauge({
      name: 'nebulagc_heartbeats_pending',
      help: 'Nodes with a heartbeat not yet flushed',
      registers: [this.registry],
      collect() {
        this.set(heartbeats.pendingCount);
      },
    });
    writer.onCommit((info) => {
      this.dbWrites.inc({ op: info.label });
      this.dbWriteDuration.observe(info.durationMs / 1000);
    });
  }
}
