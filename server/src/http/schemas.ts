import { z } from '@hono/zod-openapi';
import { errorSchema } from './errors.js';

/** A replication position: (epoch, txid) and the database checksum after it. */
export const positionSchema = z.object({ epoch: z.number().int(), txid: z.number().int(), checksum: z.string() });

export const syncSchema = z
  .object({ replicas: z.number().int(), mode: z.enum(['strict', 'degrade']), degraded: z.boolean(), holding_head: z.number().int() })
  .openapi('SyncState', { description: 'Master with NEBULAGC_SYNC_REPLICAS only: how many replicas writes wait for, and how many hold the newest transaction' });

export const electionSchema = z
  .object({
    coordinator: z.string(),
    holder: z.object({ node_id: z.string(), url: z.string(), epoch: z.number().int() }).nullable(),
    lock_held: z.boolean(),
    lock_ttl_left_ms: z.number().int().nullable(),
    candidate: z.boolean(),
    coordinator_reachable: z.boolean(),
    lock_renewal_errors: z.number().int(),
    failsafe: z.boolean(),
    failsafe_active: z.boolean(),
  })
  .openapi('Election', { description: 'NEBULAGC_HA_MODE=auto only: the coordinator, the lock holder, and this node’s lock, candidacy and failsafe state' });

/** Response and query schemas, published in /openapi.json. Request bodies come from domain/validation.ts. */
export const tenantSchema = z
  .object({ id: z.string(), name: z.string(), created_at: z.string(), updated_at: z.string() })
  .openapi('Tenant');

export const clusterSchema = z
  .object({
    id: z.string(),
    tenant_id: z.string(),
    name: z.string(),
    lighthouse_port: z.number().int(),
    provide_lighthouse: z.boolean().openapi({ description: 'Every control-plane server runs a Nebula lighthouse for the cluster on lighthouse_port' }),
    overlay_cidr: z.string(),
    config_version: z.number().int(),
    current_bundle_version: z.number().int().nullable(),
    ca_cert: z.string().nullable(),
    has_ca_key: z.boolean(),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .openapi('Cluster');

export const nodeSchema = z
  .object({
    id: z.string(),
    cluster_id: z.string(),
    name: z.string(),
    is_admin: z.boolean(),
    mtu: z.number().int(),
    routes: z.array(z.string()),
    is_lighthouse: z.boolean(),
    public_ip: z.string().nullable(),
    lighthouse_port: z.number().int().nullable(),
    is_relay: z.boolean(),
    overlay_ip: z.string().nullable(),
    groups: z.array(z.string()),
    cert_fingerprint: z.string().nullable().openapi({ description: 'Of the certificate from its last enrollment; null until it enrolls' }),
    cert_expires_at: z.string().nullable(),
    last_seen_at: z.string().nullable(),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .openapi('Node');

export const tokenSchema = z.object({ token: z.string().openapi({ description: 'Shown once; store it now.' }) });

export const bundleMetaSchema = z
  .object({
    version: z.number().int(),
    sha256: z.string(),
    size_bytes: z.number().int(),
    created_by: z.string(),
    created_at: z.string(),
    current: z.boolean(),
  })
  .openapi('BundleMeta');

export const configVersionSchema = z
  .object({
    cluster_id: z.string(),
    config_version: z.number().int(),
    bundle_version: z.number().int().nullable(),
    bundle_sha256: z.string().nullable(),
    version: z.number().int().optional().openapi({ description: 'Node token only: the node’s rendered-config version (= X-NebulaGC-Index)' }),
    config_sha256: z.string().nullable().optional().openapi({
      description:
        'Node token only: a hash of the node’s rendered content; changes exactly when the bundle’s content does; not the sha256 of the archive (that is the bundle’s ETag)',
    }),
  })
  .openapi('ConfigVersion');

const builtinLighthouseFields = {
  server_id: z.string().openapi({ description: 'The control-plane server (NEBULAGC_NODE_ID) that runs it' }),
  overlay_ip: z.string(),
  public_host: z.string().openapi({ description: 'Where hosts reach it over UDP (NEBULAGC_LIGHTHOUSE_PUBLIC_HOST)' }),
  port: z.number().int(),
};

export const builtinLighthouseSchema = z
  .object({ ...builtinLighthouseFields, cert_fingerprint: z.string(), cert_expires_at: z.string(), updated_at: z.string() })
  .openapi('BuiltinLighthouse');

export const localLighthouseSchema = z
  .object({
    server_id: z.string(),
    state: z.enum(['running', 'backoff', 'stopped']),
    pid: z.number().int().nullable(),
    restarts: z.number().int().openapi({ description: 'Restarts after the process exited on its own' }),
    started_at: z.string().nullable(),
    config_sha256: z.string(),
  })
  .openapi('LocalLighthouse');

export const topologySchema = z
  .object({
    config_version: z.number().int(),
    lighthouses: z.array(
      z.object({
        node_id: z.string(),
        name: z.string(),
        overlay_ip: z.string().nullable(),
        public_ip: z.string(),
        port: z.number().int(),
      }),
    ),
    relays: z.array(z.object({ node_id: z.string(), name: z.string(), overlay_ip: z.string().nullable() })),
    builtin_lighthouses: z.array(z.object(builtinLighthouseFields)).openapi({ description: 'Lighthouses the control-plane servers run (provide_lighthouse)' }),
  })
  .openapi('Topology');

export const nodeRoutesSchema = z
  .object({ node_id: z.string(), name: z.string(), overlay_ip: z.string().nullable(), routes: z.array(z.string()) })
  .openapi('NodeRoutes');

export const enrollmentSchema = z
  .object({
    certificate: z.string().openapi({ description: 'The signed host certificate (PEM): host.crt' }),
    ca_certificate: z.string().openapi({ description: 'The cluster CA (PEM): ca.crt' }),
    fingerprint: z.string(),
    expires_at: z.string(),
  })
  .openapi('Enrollment');

export const blocklistSchema = z
  .object({
    cluster_id: z.string(),
    fingerprints: z.array(z.string()).openapi({ description: 'For Nebula’s pki.blocklist' }),
    entries: z.array(
      z.object({
        fingerprint: z.string(),
        node_id: z.string(),
        node_name: z.string(),
        reason: z.enum(['deleted', 'reenrolled', 'changed']),
        expires_at: z.string(),
        revoked_at: z.string(),
      }),
    ),
  })
  .openapi('Blocklist');

export const pageQuery = {
  limit: z.coerce.number().int().min(1).max(1000).default(100).openapi({ param: { name: 'limit', in: 'query' } }),
  offset: z.coerce.number().int().min(0).default(0).openapi({ param: { name: 'offset', in: 'query' } }),
};

export const boolQuery = z.enum(['true', 'false']).transform((v) => v === 'true');

export const idParams = z.object({ id: z.uuid().openapi({ param: { name: 'id', in: 'path' } }) });

export const jsonBody = <T extends z.ZodType>(schema: T) => ({
  body: { content: { 'application/json': { schema } }, required: true },
});

export const ok = <T extends z.ZodType>(schema: T, description: string) => ({
  content: { 'application/json': { schema } },
  description,
});

const err = (description: string) => ({ content: { 'application/json': { schema: errorSchema } }, description });

export const errors = {
  400: err('Invalid input (VALIDATION_FAILED, INVALID_JSON)'),
  401: err('Missing or invalid token (AUTH_MISSING, AUTH_INVALID)'),
  403: err('Token not allowed to do this (FORBIDDEN)'),
  404: err('Not found, or outside the token’s scope (NOT_FOUND)'),
  409: err('Conflicts with existing data (CONFLICT)'),
  413: err('Body too large (PAYLOAD_TOO_LARGE)'),
  429: err('Rate limited (RATE_LIMITED); see Retry-After'),
} as const;

export const security: Record<string, string[]>[] = [{ bearer: [] }, { nodeToken: [] }, { clusterToken: [] }];

/** Routes that run nebula-cert. */
export const pkiErrors = { ...errors, 503: err('nebula-cert cannot run on this server (PKI_UNAVAILABLE)') } as const;
