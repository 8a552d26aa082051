import { createRoute, z } from '@hono/zod-openapi';
import type { App, Deps } from './context.js';
import { syncAndElection } from './ha-view.js';
import { electionSchema, ok, positionSchema, syncSchema } from './schemas.js';
import { VERSION } from '../version.js';
import { HA_STATES } from '../ha/states.js';

const healthSchema = z
  .object({
    status: z.enum(['healthy', 'degraded', 'unhealthy']),
    ha_mode: z.enum(['standalone', 'master', 'replica']),
    ha_state: z.enum(HA_STATES).openapi({ description: 'The HA state (docs/HA.md has the table)' }),
    epoch: z.number().int().openapi({ description: 'The newest epoch this node knows of' }),
    node_id: z.string(),
    version: z.string(),
    timestamp: z.string(),
    uptime_seconds: z.number(),
    writable: z.boolean(),
    master_url: z.string().nullable(),
    position: positionSchema.nullable().openapi({ description: 'Newest transaction captured (master) or visible to readers (replica)' }),
    durable_position: positionSchema.nullable().optional().openapi({ description: 'Replica only: newest transaction on disk, the one acknowledged to the master' }),
    lag: z.object({ transactions: z.number(), ms: z.number().nullable() }),
    replicas: z.number().int().optional(),
    sync: syncSchema.optional(),
    election: electionSchema.optional(),
    backup: z
      .object({
        enabled: z.literal(true),
        active: z.boolean().openapi({ description: 'This node should be uploading: it takes writes' }),
        running: z.boolean().openapi({ description: 'The litestream process is running' }),
        last_success_at: z.string().nullable().openapi({ description: 'When the last upload (a WAL segment or a snapshot) finished, since this process started' }),
        errors: z.number().int(),
        last_error: z.string().nullable(),
      })
      .optional()
      .openapi({ description: 'Managed Litestream (NEBULAGC_LITESTREAM_URL); absent when off' }),
    quarantined_transactions: z.number().int().openapi({ description: 'Diverged transactions this node kept in quarantine since it started (nebulagc-server quarantine list)' }),
    checks: z.object({ database: z.object({ ok: z.boolean(), error: z.string().optional() }) }),
  })
  .openapi('Health');

const checkSchema = z.object({ status: z.string(), reason: z.string().optional() });
const tags = ['System'];

/** Load balancers route on these: /health is always 200 while the process lives; the others say yes or no. */
export function registerHealthRoutes(app: App, { config, store, role, backup }: Deps): void {
  const startedAt = Date.now();

  const databaseCheck = (): { ok: boolean; error?: string } => {
    if (role.replica && !role.replica.hasCopy) return { ok: false, error: 'no verified copy (replica bootstrapping, or replaying after a crash)' };
    if (role.machine.is('starting', 'promoting', 'demoting', 'stopped')) return { ok: false, error: `changing role (${role.state})` };
    try {
      store.reader.prepare('SELECT count(*) FROM sqlite_master').get();
      return { ok: true };
    } catch (err) {
      return { ok: false, error: (err as Error).message };
    }
  };

  app.openapi(
    createRoute({ method: 'get', path: '/health', tags, summary: 'Role, status and checks', responses: { 200: ok(healthSchema, 'Always 200 while live') } }),
    (c) => {
      const database = databaseCheck();
      const writable = role.takesWrites && store.writer.writable;
      const lag = role.lag();
      const lagging = role.mode === 'replica' && !(lag.ms <= config.replication.maxReplicaLagMs);
      const status = !database.ok ? 'unhealthy' : (role.mode !== 'replica' && !writable) || lagging ? 'degraded' : 'healthy';
      return c.json(
        {
          status,
          ha_mode: role.mode,
          ha_state: role.state,
          epoch: role.epoch,
          node_id: config.nodeId,
          version: VERSION,
          timestamp: new Date().toISOString(),
          uptime_seconds: Math.round((Date.now() - startedAt) / 1000),
          writable,
          master_url: role.masterUrl ?? null,
          position: role.position ?? null,
          ...(role.replica ? { durable_position: role.replica.durablePosition ?? null } : {}),
          lag: { transactions: lag.transactions, ms: Number.isFinite(lag.ms) ? Math.round(lag.ms * 1000) / 1000 : null },
          ...(role.master ? { replicas: role.master.connectedReplicas } : {}),
          ...syncAndElection(role),
          ...(backup ? { backup: backup.status() } : {}),
          quarantined_transactions: role.quarantinedTransactions,
          checks: { database },
        } as const,
        200,
      );
    },
  );

  app.openapi(
    createRoute({ method: 'get', path: '/health/live', tags, summary: 'Liveness', responses: { 200: ok(checkSchema, 'Process is up') } }),
    (c) => c.json({ status: 'ok' }, 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/health/ready',
      tags,
      summary: 'Readiness: the database answers reads',
      responses: { 200: ok(checkSchema, 'Ready'), 503: ok(checkSchema, 'Not ready') },
    }),
    (c) => {
      const database = databaseCheck();
      return database.ok ? c.json({ status: 'ok' }, 200) : c.json({ status: 'unavailable', reason: database.error }, 503);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/health/master',
      tags,
      summary: '200 only on a node that may take writes now',
      responses: { 200: ok(checkSchema, 'Takes writes'), 503: ok(checkSchema, 'Does not take writes') },
    }),
    (c) => (role.takesWrites && store.writer.writable ? c.json({ status: 'ok' }, 200) : c.json({ status: 'not_master', reason: role.state }, 503)),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/health/replica',
      tags,
      summary: '200 only on a replica whose lag is under NEBULAGC_MAX_REPLICA_LAG_MS (or ?max_lag_ms=)',
      request: { query: z.object({ max_lag_ms: z.coerce.number().int().min(0).optional().openapi({ param: { name: 'max_lag_ms', in: 'query' } }) }) },
      responses: { 200: ok(checkSchema, 'A replica within the lag'), 503: ok(checkSchema, 'Not a replica, or too far behind') },
    }),
    (c) => {
      if (role.mode !== 'replica') return c.json({ status: 'not_replica' }, 503);
      const max = c.req.valid('query').max_lag_ms ?? config.replication.maxReplicaLagMs;
      const { ms } = role.lag();
      return ms <= max ? c.json({ status: 'ok' }, 200) : c.json({ status: 'lagging', reason: Number.isFinite(ms) ? `lag ${Math.round(ms)} ms > ${max} ms` : 'no copy or no contact with the master' }, 503);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/version',
      tags,
      summary: 'Server version',
      responses: { 200: ok(z.object({ version: z.string(), node_id: z.string() }), 'Version') },
    }),
    (c) => c.json({ version: VERSION, node_id: config.nodeId }, 200),
  );
}
