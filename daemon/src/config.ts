import { readFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';

export const DEFAULT_CONFIG_PATH = '/etc/nebulagc/daemon.yml';

/** A command is a binary on PATH or an absolute path, or a wrapper with its arguments. */
const commandSchema = z
  .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
  .transform((v) => (typeof v === 'string' ? [v] : v));

const absolutePath = z.string().refine((p) => path.isAbsolute(p), 'must be an absolute path');

const urlSchema = z
  .string()
  .url()
  .refine((u) => /^https?:\/\//.test(u), 'must be an http:// or https:// URL')
  .transform((u) => u.replace(/\/+$/, ''));

const clusterSchema = z
  .strictObject({
    // Becomes part of env var names and status keys, so it is kept to a portable alphabet.
    name: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'must be lowercase letters, digits, "-" or "_"'),
    servers: z.array(urlSchema).min(1, 'needs at least one server URL'),
    node_token: z.string().min(1).optional(),
    node_token_file: absolutePath.optional(),
    state_dir: absolutePath,
    config_dir: absolutePath,
    routes: z.array(z.string().regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, 'must be an IPv4 CIDR like 10.1.0.0/24')).optional(),
    nebula_bin: commandSchema.optional(),
    nebula_cert_bin: commandSchema.optional(),
  })
  .refine((c) => (c.node_token === undefined) !== (c.node_token_file === undefined), {
    message: 'set exactly one of node_token and node_token_file',
    path: ['node_token'],
  });

const pollSchema = z.strictObject({
  mode: z.enum(['blocking', 'plain']).default('blocking'),
  wait_seconds: z.number().int().min(1).max(300).default(30),
  interval_seconds: z.number().min(0.1).max(3600).default(5),
  heartbeat_interval_seconds: z.number().min(0.1).max(3600).default(5),
  request_timeout_seconds: z.number().min(0.1).max(600).default(10),
});

const backoffSchema = (initial: number, max: number) =>
  z.strictObject({
    initial_ms: z.number().int().min(10).default(initial),
    max_ms: z.number().int().min(10).default(max),
  });

export const fileSchema = z.strictObject({
  log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  status_file: absolutePath.default('/var/lib/nebulagc/status.json'),
  nebula_bin: commandSchema.default(['nebula']),
  nebula_cert_bin: commandSchema.default(['nebula-cert']),
  max_bundle_bytes: z.number().int().min(1024).default(10 * 1024 * 1024),
  poll: pollSchema.default(pollSchema.parse({})),
  server_backoff: backoffSchema(1000, 60000).default({ initial_ms: 1000, max_ms: 60000 }),
  restart_backoff: backoffSchema(1000, 30000)
    .extend({ reset_after_ms: z.number().int().min(10).default(60000) })
    .default({ initial_ms: 1000, max_ms: 30000, reset_after_ms: 60000 }),
  clusters: z.array(clusterSchema).min(1, 'needs at least one cluster'),
});

export type FileConfig = z.infer<typeof fileSchema>;

export interface ClusterConfig {
  name: string;
  servers: string[];
  nodeToken: string;
  stateDir: string;
  configDir: string;
  routes: string[] | undefined;
  nebulaBin: string[];
  nebulaCertBin: string[];
}

export interface DaemonConfig {
  path: string;
  logLevel: FileConfig['log_level'];
  statusFile: string;
  maxBundleBytes: number;
  poll: {
    mode: 'blocking' | 'plain';
    waitMs: number;
    intervalMs: number;
    heartbeatIntervalMs: number;
    requestTimeoutMs: number;
  };
  serverBackoff: { initialMs: number; maxMs: number };
  restartBackoff: { initialMs: number; maxMs: number; resetAfterMs: number };
  clusters: ClusterConfig[];
}

/** A config problem the user must fix; its message is the one line the CLI prints. */
export class ConfigError extends Error {}

/** `NEBULAGC_DAEMON_<CLUSTER>_<FIELD>`, with the cluster name upper-cased and "-" as "_". */
export const clusterEnvName = (cluster: string, field: string): string =>
  `NEBULAGC_DAEMON_${cluster.toUpperCase().replace(/-/g, '_')}_${field}`;

const GLOBAL_ENV: Record<string, (raw: Record<string, unknown>, value: string) => void> = {
  NEBULAGC_DAEMON_LOG_LEVEL: (raw, v) => (raw.log_level = v),
  NEBULAGC_DAEMON_STATUS_FILE: (raw, v) => (raw.status_file = v),
  NEBULAGC_DAEMON_NEBULA_BIN: (raw, v) => (raw.nebula_bin = splitCommand(v)),
  NEBULAGC_DAEMON_NEBULA_CERT_BIN: (raw, v) => (raw.nebula_cert_bin = splitCommand(v)),
  NEBULAGC_DAEMON_POLL_MODE: (raw, v) => (poll(raw).mode = v),
  NEBULAGC_DAEMON_POLL_WAIT_SECONDS: (raw, v) => (poll(raw).wait_seconds = Number(v)),
  NEBULAGC_DAEMON_POLL_INTERVAL_SECONDS: (raw, v) => (poll(raw).interval_seconds = Number(v)),
};

const CLUSTER_ENV: Record<string, (cluster: Record<string, unknown>, value: string) => void> = {
  SERVERS: (c, v) => (c.servers = v.split(',').map((s) => s.trim()).filter(Boolean)),
  NODE_TOKEN: (c, v) => {
    c.node_token = v;
    delete c.node_token_file;
  },
  NODE_TOKEN_FILE: (c, v) => {
    c.node_token_file = v;
    delete c.node_token;
  },
  ROUTES: (c, v) => (c.routes = v.split(',').map((s) => s.trim()).filter(Boolean)),
};

/** Every env var name the daemon reads, for the docs. */
export const globalEnvNames = Object.keys(GLOBAL_ENV);
export const clusterEnvFields = Object.keys(CLUSTER_ENV);

function poll(raw: Record<string, unknown>): Record<string, unknown> {
  if (typeof raw.poll !== 'object' || raw.poll === null) raw.poll = {};
  return raw.poll as Record<string, unknown>;
}

const splitCommand = (v: string): string[] => v.split(/\s+/).filter(Boolean);

function applyEnv(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): void {
  for (const [name, apply] of Object.entries(GLOBAL_ENV)) {
    const value = env[name];
    if (value !== undefined && value !== '') apply(raw, value);
  }
  if (!Array.isArray(raw.clusters)) return;
  for (const cluster of raw.clusters as unknown[]) {
    if (typeof cluster !== 'object' || cluster === null) continue;
    const c = cluster as Record<string, unknown>;
    if (typeof c.name !== 'string') continue;
    for (const [field, apply] of Object.entries(CLUSTER_ENV)) {
      const value = env[clusterEnvName(c.name, field)];
      if (value !== undefined && value !== '') apply(c, value);
    }
  }
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const field = issue.path
    .map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`))
    .join('');
  return `${field || '(top level)'}: ${issue.message}`;
}

/** Parses and validates a config document; env overrides apply before validation. */
export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): DaemonConfig {
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) throw new ConfigError(`${file}: not valid YAML: ${doc.errors[0]!.message.split('\n')[0]}`);
  const raw: unknown = doc.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`${file}: must be a YAML mapping`);
  applyEnv(raw as Record<string, unknown>, env);
  const parsed = fileSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(`${file}: ${describeIssue(parsed.error.issues[0]!)}`);
  const f = parsed.data;

  const names = new Set<string>();
  const clusters = f.clusters.map((c, i): ClusterConfig => {
    if (names.has(c.name)) throw new ConfigError(`${file}: clusters[${i}].name: "${c.name}" is used twice`);
    names.add(c.name);
    return {
      name: c.name,
      servers: c.servers,
      nodeToken: c.node_token ?? readToken(file, i, c.node_token_file!),
      stateDir: c.state_dir,
      configDir: c.config_dir,
      routes: c.routes,
      nebulaBin: c.nebula_bin ?? f.nebula_bin,
      nebulaCertBin: c.nebula_cert_bin ?? f.nebula_cert_bin,
    };
  });
  for (const [field, dirs] of [
    ['state_dir', clusters.map((c) => c.stateDir)],
    ['config_dir', clusters.map((c) => c.configDir)],
  ] as const) {
    const dup = dirs.find((d, i) => dirs.indexOf(d) !== i);
    if (dup) throw new ConfigError(`${file}: clusters[].${field}: "${dup}" is shared by two clusters`);
  }

  return {
    path: file,
    logLevel: f.log_level,
    statusFile: f.status_file,
    maxBundleBytes: f.max_bundle_bytes,
    poll: {
      mode: f.poll.mode,
      waitMs: f.poll.wait_seconds * 1000,
      intervalMs: f.poll.interval_seconds * 1000,
      heartbeatIntervalMs: f.poll.heartbeat_interval_seconds * 1000,
      requestTimeoutMs: f.poll.request_timeout_seconds * 1000,
    },
    serverBackoff: { initialMs: f.server_backoff.initial_ms, maxMs: f.server_backoff.max_ms },
    restartBackoff: {
      initialMs: f.restart_backoff.initial_ms,
      maxMs: f.restart_backoff.max_ms,
      resetAfterMs: f.restart_backoff.reset_after_ms,
    },
    clusters,
  };
}

function readToken(file: string, index: number, tokenFile: string): string {
  let token: string;
  try {
    token = readFileSync(tokenFile, 'utf8').trim();
  } catch (err) {
    throw new ConfigError(`${file}: clusters[${index}].node_token_file: cannot read ${tokenFile}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (token === '') throw new ConfigError(`${file}: clusters[${index}].node_token_file: ${tokenFile} is empty`);
  return token;
}

export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): DaemonConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read the config file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseConfig(text, file, env);
}
