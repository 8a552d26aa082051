import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import type { SyncSettings } from './ha/semisync.js';

const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

const positiveInt = (def: number) => z.coerce.number().int().positive().default(def);
const nonNegative = (def: number) => z.coerce.number().nonnegative().default(def);

const listen = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, 'must be HOST:PORT')
  .transform((v) => {
    const idx = v.lastIndexOf(':');
    const host = v.slice(0, idx).replace(/^\[|\]$/g, '');
    const port = Number(v.slice(idx + 1));
    return { host, port };
  })
  .refine((v) => v.port <= 65535, 'port must be 0-65535');

/** A Go-style duration as nebula-cert takes it (720h, 90m, 1h30m), in seconds. */
const duration = (def: string) =>
  z
    .string()
    .default(def)
    .pipe(
      z
        .string()
        .regex(/^(?=\d)(?:\d+h)?(?:\d+m)?(?:\d+s)?$/, 'must be a duration such as 720h, 90m or 1h30m')
        .transform((v) => {
          const [, h = '0', m = '0', sec = '0'] = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(v)!;
          return Number(h) * 3600 + Number(m) * 60 + Number(sec);
        })
        .refine((s) => s >= 60 && s <= 876_000 * 3600, 'must be between 1m and 876000h (100 years)'),
    );

/**
 * The master's checkpoint step by durability mode (measured, docs/BENCHMARKS.md, Capture overhead). At
 * NORMAL each step's cost is mostly its fixed part (the last copy and two fsyncs on the event
 * loop), and 16 MiB steps gave 0.85-0.95 of the writes without replication against 0.74-0.80
 * with 4 MiB. At FULL every commit fsyncs the WAL, and a bigger WAL made that slower (0.69-0.78
 * against 0.78-0.81).
 */
const defaultCheckpointBytes = (synchronous: 'FULL' | 'NORMAL'): number => (synchronous === 'NORMAL' ? 16 : 4) * 1024 * 1024;

/** Every setting, keyed by its env var. The README's configuration table mirrors this. */
export const envSchema = z.object({
  NEBULAGC_LISTEN: z.string().default('0.0.0.0:8080').pipe(listen),
  NEBULAGC_DB_PATH: z.string().min(1).default('./data/nebulagc.db'),
  NEBULAGC_HMAC_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  NEBULAGC_DEV: bool.default(false),
  NEBULAGC_ADMIN_TOKEN: z.string().min(32, 'must be at least 32 characters').optional(),
  NEBULAGC_OPERATOR_TOKEN: z.string().min(1).optional(),
  NEBULAGC_NODE_ID: z.string().min(1).default(os.hostname()),
  NEBULAGC_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  NEBULAGC_HA_MODE: z.enum(['standalone', 'master', 'replica', 'auto']).default('standalone'),
  NEBULAGC_COORDINATOR: z.enum(['etcd', 'consul']).default('etcd'),
  NEBULAGC_ETCD_ENDPOINTS: z.string().min(1).optional(),
  NEBULAGC_CONSUL_ADDR: z.url({ protocol: /^https?$/ }).default('http://127.0.0.1:8500'),
  NEBULAGC_CONSUL_TOKEN: z.string().min(1).optional(),
  NEBULAGC_FAILSAFE: bool.default(false),
  NEBULAGC_CLUSTER_NAME: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/, 'must be letters, digits, . _ / -').default('nebulagc'),
  NEBULAGC_LOCK_TTL_S: z.coerce.number().int().positive().optional(),
  NEBULAGC_MAX_LAG_ON_FAILOVER: z.coerce.number().int().nonnegative().default(0),
  NEBULAGC_FAILOVER_PRIORITY: z.coerce.number().int().default(0),
  NEBULAGC_MASTER_URL: z.url({ protocol: /^https?$/ }).optional(),
  NEBULAGC_ADVERTISE_URL: z.url({ protocol: /^https?$/ }).optional(),
  NEBULAGC_REPLICATION_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  NEBULAGC_CANDIDATE: bool.default(true),
  NEBULAGC_MIN_REPLICAS: z.coerce.number().int().nonnegative().default(0),
  NEBULAGC_SWITCHOVER_TIMEOUT_MS: positiveInt(5000),
  NEBULAGC_SYNC_REPLICAS: z.coerce.number().int().nonnegative().default(0),
  NEBULAGC_SYNC_TIMEOUT_MS: positiveInt(5000),
  NEBULAGC_SYNC_MODE: z.enum(['strict', 'degrade']).default('strict'),
  NEBULAGC_REPLICA_WRITES: z.enum(['redirect', 'proxy', 'reject']).default('redirect'),
  NEBULAGC_MAX_REPLICA_LAG_MS: positiveInt(5000),
  NEBULAGC_MIN_TXID_WAIT_MS: nonNegative(2000),
  NEBULAGC_ROLE_CHANGE_HOLD_MS: nonNegative(5000),
  NEBULAGC_KEEPALIVE_TIMEOUT_MS: nonNegative(65000),
  NEBULAGC_STALE_READS: z.enum(['unavailable', 'redirect']).default('unavailable'),
  NEBULAGC_REPLICATION_LOG_BYTES: positiveInt(256 * 1024 * 1024),
  NEBULAGC_REPLICATION_LOG_MAX_AGE_S: positiveInt(24 * 3600),
  NEBULAGC_REPLICATION_MEMORY_BYTES: positiveInt(64 * 1024 * 1024),
  NEBULAGC_WAL_CHECKPOINT_BYTES: z.coerce.number().nonnegative().optional(),
  NEBULAGC_TLS_CERT: z.string().min(1).optional(),
  NEBULAGC_TLS_KEY: z.string().min(1).optional(),
  NEBULAGC_TLS_CA: z.string().min(1).optional(),
  NEBULAGC_DB_SYNCHRONOUS: z.enum(['FULL', 'NORMAL']).default('FULL'),
  NEBULAGC_MAX_BODY_BYTES: positiveInt(64 * 1024),
  NEBULAGC_MAX_BUNDLE_BYTES: positiveInt(10 * 1024 * 1024),
  NEBULAGC_HEARTBEAT_FLUSH_MS: positiveInt(2000),
  NEBULAGC_POLL_MAX_WAIT_MS: positiveInt(5 * 60 * 1000),
  NEBULAGC_TRUST_PROXY: bool.default(false),
  NEBULAGC_RATE_LIMIT_IP_RPS: nonNegative(100),
  NEBULAGC_RATE_LIMIT_IP_BURST: nonNegative(200),
  NEBULAGC_RATE_LIMIT_NODE_RPS: nonNegative(5),
  NEBULAGC_RATE_LIMIT_NODE_BURST: nonNegative(20),
  NEBULAGC_RATE_LIMIT_CLUSTER_RPS: nonNegative(2000),
  NEBULAGC_RATE_LIMIT_CLUSTER_BURST: nonNegative(4000),
  NEBULAGC_NEBULA_CERT_BIN: z.string().min(1).default('nebula-cert'),
  NEBULAGC_CA_LIFETIME: duration('87600h'),
  NEBULAGC_CERT_LIFETIME: duration('720h'),
  NEBULAGC_NEBULA_BIN: z.string().min(1).default('nebula'),
  NEBULAGC_LIGHTHOUSE_PUBLIC_HOST: z.union([z.ipv4(), z.ipv6(), z.hostname()]).optional(),
  NEBULAGC_LIGHTHOUSE_LISTEN_HOST: z.union([z.ipv4(), z.ipv6()]).default('0.0.0.0'),
  NEBULAGC_LIGHTHOUSE_DIR: z.string().min(1).optional(),
  NEBULAGC_LITESTREAM_URL: z
    .string()
    .regex(/^(s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/.*)?|file:\/\/\/.+)$/, 'must be s3://bucket[/path] or file:///absolute/dir')
    .optional(),
  NEBULAGC_LITESTREAM_ENDPOINT: z.url({ protocol: /^https?$/ }).optional(),
  NEBULAGC_LITESTREAM_REGION: z.string().min(1).default('us-east-1'),
  NEBULAGC_LITESTREAM_SYNC_INTERVAL: z.string().regex(/^\d+(ms|s|m)$/, 'must be a duration such as 1s, 500ms or 1m').default('1s'),
  NEBULAGC_LITESTREAM_BIN: z.string().min(1).optional(),
  NEBULAGC_RESTORE_ON_BOOT: bool.default(false),
  NEBULAGC_BOOTSTRAP_FROM_BACKUP: bool.default(false),
});

export type Env = z.infer<typeof envSchema>;

export interface RateLimit {
  /** Sustained requests per second; 0 turns the limit off. */
  rps: number;
  burst: number;
}

export interface Config {
  listen: { host: string; port: number };
  dbPath: string;
  hmacSecret: string | undefined;
  dev: boolean;
  adminToken: string | undefined;
  /** For CLI commands that call a running server (replication status). */
  operatorToken: string | undefined;
  nodeId: string;
  logLevel: Env['NEBULAGC_LOG_LEVEL'];
  haMode: Env['NEBULAGC_HA_MODE'];
  replication: ReplicationConfig;
  ha: HaConfig;
  tls: { cert: string; key: string; ca: string | undefined } | undefined;
  synchronous: Env['NEBULAGC_DB_SYNCHRONOUS'];
  maxBodyBytes: number;
  /** How long an idle HTTP connection stays open; longer than any proxy's idle timeout in front. */
  keepAliveTimeoutMs: number;
  maxBundleBytes: number;
  heartbeatFlushMs: number;
  /** Cap (and default) of a blocking poll's `wait`. */
  pollMaxWaitMs: number;
  trustProxy: boolean;
  rateLimits: { ip: RateLimit; node: RateLimit; cluster: RateLimit };
  pki: { nebulaCertBin: string; caLifetimeS: number; certLifetimeS: number };
  lighthouse: LighthouseConfig;
  /** Managed Litestream (NEBULAGC_LITESTREAM_URL); undefined when off. */
  backup: BackupConfig | undefined;
}

/** Continuous backup of the master's database with Litestream, and restore from it. */
export interface BackupConfig {
  /** s3://bucket/path or file:///dir */
  url: string;
  endpoint: string | undefined;
  region: string;
  /** A Go duration, as Litestream reads it (1s, 500ms). */
  syncInterval: string;
  /** Undefined: the binary of @flydotio/litestream-linux-x64. */
  bin: string | undefined;
  /** From AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; absent for file:// and instance roles. */
  accessKeyId: string | undefined;
  secretAccessKey: string | undefined;
  restoreOnBoot: boolean;
  /** A new replica restores the backup and streams from the master's log after it, instead of a snapshot. */
  bootstrapFromBackup: boolean;
}

/** Built-in lighthouses: what this server runs for clusters with provide_lighthouse. */
export interface LighthouseConfig {
  nebulaBin: string;
  /** The UDP address hosts reach this server at, as published in builtin_lighthouses. */
  publicHost: string;
  listenHost: string;
  /** Per-cluster keys, certificates and nebula configs. */
  dir: string;
}

/** Runtime roles: who may be promoted, and the bounds of the operations. */
export interface HaConfig {
  /** Whether this node may become master (a switchover picks only candidates). */
  candidate: boolean;
  /** Forgetting a replica is refused when it would leave fewer connected replicas than this. */
  minReplicas: number;
  /** How long a switchover waits for its target to hold everything. */
  switchoverTimeoutMs: number;
  /** Semi-synchronous writes: 0 replicas is asynchronous replication. */
  sync: SyncSettings;
  /** NEBULAGC_HA_MODE=auto only: the election. */
  auto: AutoConfig | undefined;
}

export interface AutoConfig {
  coordinator: Env['NEBULAGC_COORDINATOR'];
  etcdEndpoints: string[];
  consulAddr: string;
  /** Secret: never logged. */
  consulToken: string | undefined;
  /** The key prefix in the coordinator. */
  clusterName: string;
  /** The longest a dead master's lock outlives it, on either coordinator. */
  lockTtlS: number;
  /** NEBULAGC_FAILSAFE: keep writing through a coordinator outage while every member answers. */
  failsafe: boolean;
  maxLagOnFailover: number;
  priority: number;
}

export interface ReplicationConfig {
  masterUrl: string | undefined;
  /** The URL clients should use to reach this node's API; masters put it in redirects. */
  advertiseUrl: string;
  secret: string | undefined;
  replicaWrites: Env['NEBULAGC_REPLICA_WRITES'];
  maxReplicaLagMs: number;
  minTxidWaitMs: number;
  /** How long a request that meets a node between roles waits for the change to finish before it is refused. */
  roleChangeHoldMs: number;
  staleReads: Env['NEBULAGC_STALE_READS'];
  log: { maxBytes: number; maxAgeMs: number; memoryBytes: number };
  walCheckpointBytes: number;
}

export class ConfigError extends Error {}

/** Flags win over env vars; env vars win over defaults. Empty strings count as unset. */
export function loadConfig(env: NodeJS.ProcessEnv, overrides: Partial<Record<keyof Env, string>> = {}): Config {
  const raw: Record<string, string> = {};
  for (const key of Object.keys(envSchema.shape)) {
    const v = overrides[key as keyof Env] ?? env[key];
    if (v !== undefined && v !== '') raw[key] = v;
  }
  const parsed = envSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = String(issue.path[0] ?? 'config');
    throw new ConfigError(`invalid ${key}: ${issue.message}`);
  }
  const e = parsed.data;
  const mode = e.NEBULAGC_HA_MODE;
  if (mode !== 'standalone' && !e.NEBULAGC_REPLICATION_SECRET) {
    throw new ConfigError(`invalid NEBULAGC_REPLICATION_SECRET: required when NEBULAGC_HA_MODE=${mode}`);
  }
  if (mode === 'auto' && e.NEBULAGC_COORDINATOR === 'etcd' && !e.NEBULAGC_ETCD_ENDPOINTS) {
    throw new ConfigError('invalid NEBULAGC_ETCD_ENDPOINTS: required when NEBULAGC_HA_MODE=auto with NEBULAGC_COORDINATOR=etcd (a comma-separated list of etcd client URLs)');
  }
  // Consul keeps a session up to twice its TTL and its minimum is 10 s: the session gets half the lock's TTL.
  const lockTtlS = e.NEBULAGC_LOCK_TTL_S ?? (e.NEBULAGC_COORDINATOR === 'consul' ? 20 : 2);
  if (mode === 'auto' && e.NEBULAGC_COORDINATOR === 'consul' && lockTtlS < 20) {
    throw new ConfigError('invalid NEBULAGC_LOCK_TTL_S: at least 20 with NEBULAGC_COORDINATOR=consul (the session gets half of it, and Consul’s minimum session TTL is 10 s)');
  }
  if (mode === 'replica' && !e.NEBULAGC_MASTER_URL) {
    throw new ConfigError('invalid NEBULAGC_MASTER_URL: required when NEBULAGC_HA_MODE=replica');
  }
  if ((e.NEBULAGC_TLS_CERT === undefined) !== (e.NEBULAGC_TLS_KEY === undefined)) {
    throw new ConfigError('invalid NEBULAGC_TLS_KEY: NEBULAGC_TLS_CERT and NEBULAGC_TLS_KEY go together');
  }
  if (e.NEBULAGC_CERT_LIFETIME > e.NEBULAGC_CA_LIFETIME) {
    throw new ConfigError('invalid NEBULAGC_CERT_LIFETIME: must not exceed NEBULAGC_CA_LIFETIME');
  }
  if (e.NEBULAGC_LITESTREAM_URL && e.NEBULAGC_WAL_CHECKPOINT_BYTES) {
    throw new ConfigError('invalid NEBULAGC_WAL_CHECKPOINT_BYTES: must be unset or 0 with NEBULAGC_LITESTREAM_URL (Litestream owns the checkpoints; docs/HA.md, "Backups with Litestream")');
  }
  for (const key of ['NEBULAGC_RESTORE_ON_BOOT', 'NEBULAGC_BOOTSTRAP_FROM_BACKUP'] as const) {
    if (e[key] && !e.NEBULAGC_LITESTREAM_URL) throw new ConfigError(`invalid ${key}: needs NEBULAGC_LITESTREAM_URL, the backup to restore from`);
  }
  const scheme = e.NEBULAGC_TLS_CERT ? 'https' : 'http';
  const listenHost = e.NEBULAGC_LISTEN.host === '0.0.0.0' || e.NEBULAGC_LISTEN.host === '::' ? os.hostname() : e.NEBULAGC_LISTEN.host;
  // An IPv6 literal needs brackets in a URL, or its colons read as the port's.
  const urlHost = listenHost.includes(':') ? `[${listenHost}]` : listenHost;
  const advertiseUrl = (e.NEBULAGC_ADVERTISE_URL ?? `${scheme}://${urlHost}:${e.NEBULAGC_LISTEN.port}`).replace(/\/+$/, '');
  return {
    listen: e.NEBULAGC_LISTEN,
    dbPath: e.NEBULAGC_DB_PATH,
    hmacSecret: e.NEBULAGC_HMAC_SECRET,
    dev: e.NEBULAGC_DEV,
    adminToken: e.NEBULAGC_ADMIN_TOKEN,
    operatorToken: e.NEBULAGC_OPERATOR_TOKEN,
    nodeId: e.NEBULAGC_NODE_ID,
    logLevel: e.NEBULAGC_LOG_LEVEL,
    haMode: mode,
    replication: {
      masterUrl: e.NEBULAGC_MASTER_URL?.replace(/\/+$/, ''),
      advertiseUrl,
      secret: e.NEBULAGC_REPLICATION_SECRET,
      replicaWrites: e.NEBULAGC_REPLICA_WRITES,
      maxReplicaLagMs: e.NEBULAGC_MAX_REPLICA_LAG_MS,
      minTxidWaitMs: e.NEBULAGC_MIN_TXID_WAIT_MS,
      roleChangeHoldMs: e.NEBULAGC_ROLE_CHANGE_HOLD_MS,
      staleReads: e.NEBULAGC_STALE_READS,
      log: {
        maxBytes: e.NEBULAGC_REPLICATION_LOG_BYTES,
        maxAgeMs: e.NEBULAGC_REPLICATION_LOG_MAX_AGE_S * 1000,
        memoryBytes: e.NEBULAGC_REPLICATION_MEMORY_BYTES,
      },
      walCheckpointBytes: e.NEBULAGC_LITESTREAM_URL ? 0 : (e.NEBULAGC_WAL_CHECKPOINT_BYTES ?? defaultCheckpointBytes(e.NEBULAGC_DB_SYNCHRONOUS)),
    },
    ha: {
      candidate: e.NEBULAGC_CANDIDATE,
      minReplicas: e.NEBULAGC_MIN_REPLICAS,
      switchoverTimeoutMs: e.NEBULAGC_SWITCHOVER_TIMEOUT_MS,
      sync: { replicas: e.NEBULAGC_SYNC_REPLICAS, timeoutMs: e.NEBULAGC_SYNC_TIMEOUT_MS, mode: e.NEBULAGC_SYNC_MODE },
      auto:
        mode === 'auto'
          ? {
              coordinator: e.NEBULAGC_COORDINATOR,
              etcdEndpoints: (e.NEBULAGC_ETCD_ENDPOINTS ?? '').split(',').map((u) => u.trim()).filter((u) => u.length > 0),
              consulAddr: e.NEBULAGC_CONSUL_ADDR.replace(/\/+$/, ''),
              consulToken: e.NEBULAGC_CONSUL_TOKEN,
              clusterName: e.NEBULAGC_CLUSTER_NAME,
              lockTtlS,
              failsafe: e.NEBULAGC_FAILSAFE,
              maxLagOnFailover: e.NEBULAGC_MAX_LAG_ON_FAILOVER,
              priority: e.NEBULAGC_FAILOVER_PRIORITY,
            }
          : undefined,
    },
    tls: e.NEBULAGC_TLS_CERT && e.NEBULAGC_TLS_KEY ? { cert: e.NEBULAGC_TLS_CERT, key: e.NEBULAGC_TLS_KEY, ca: e.NEBULAGC_TLS_CA } : undefined,
    synchronous: e.NEBULAGC_DB_SYNCHRONOUS,
    maxBodyBytes: e.NEBULAGC_MAX_BODY_BYTES,
    keepAliveTimeoutMs: e.NEBULAGC_KEEPALIVE_TIMEOUT_MS,
    maxBundleBytes: e.NEBULAGC_MAX_BUNDLE_BYTES,
    heartbeatFlushMs: e.NEBULAGC_HEARTBEAT_FLUSH_MS,
    pollMaxWaitMs: e.NEBULAGC_POLL_MAX_WAIT_MS,
    trustProxy: e.NEBULAGC_TRUST_PROXY,
    rateLimits: {
      ip: { rps: e.NEBULAGC_RATE_LIMIT_IP_RPS, burst: e.NEBULAGC_RATE_LIMIT_IP_BURST },
      node: { rps: e.NEBULAGC_RATE_LIMIT_NODE_RPS, burst: e.NEBULAGC_RATE_LIMIT_NODE_BURST },
      cluster: { rps: e.NEBULAGC_RATE_LIMIT_CLUSTER_RPS, burst: e.NEBULAGC_RATE_LIMIT_CLUSTER_BURST },
    },
    pki: { nebulaCertBin: e.NEBULAGC_NEBULA_CERT_BIN, caLifetimeS: e.NEBULAGC_CA_LIFETIME, certLifetimeS: e.NEBULAGC_CERT_LIFETIME },
    lighthouse: {
      nebulaBin: e.NEBULAGC_NEBULA_BIN,
      publicHost:
        e.NEBULAGC_LIGHTHOUSE_PUBLIC_HOST ??
        (e.NEBULAGC_ADVERTISE_URL ? new URL(e.NEBULAGC_ADVERTISE_URL).hostname.replace(/^\[|\]$/g, '') : listenHost),
      listenHost: e.NEBULAGC_LIGHTHOUSE_LISTEN_HOST,
      dir: path.resolve(e.NEBULAGC_LIGHTHOUSE_DIR ?? `${path.resolve(e.NEBULAGC_DB_PATH)}-lighthouses`),
    },
    backup: e.NEBULAGC_LITESTREAM_URL
      ? {
          url: e.NEBULAGC_LITESTREAM_URL,
          endpoint: e.NEBULAGC_LITESTREAM_ENDPOINT,
          region: e.NEBULAGC_LITESTREAM_REGION,
          syncInterval: e.NEBULAGC_LITESTREAM_SYNC_INTERVAL,
          bin: e.NEBULAGC_LITESTREAM_BIN,
          accessKeyId: env.AWS_ACCESS_KEY_ID || undefined,
          secretAccessKey: env.AWS_SECRET_ACCESS_KEY || undefined,
          restoreOnBoot: e.NEBULAGC_RESTORE_ON_BOOT,
          bootstrapFromBackup: e.NEBULAGC_BOOTSTRAP_FROM_BACKUP,
        }
      : undefined,
  };
}
