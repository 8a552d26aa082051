import { createRoute, z } from '@hono/zod-openapi';
import { requireOperator } from '../../domain/auth.js';
import type { App, Deps } from '../context.js';
import { syncAndElection } from '../ha-view.js';
import { electionSchema, errors, ok, positionSchema, security, syncSchema } from '../schemas.js';

const lagSchema = z.object({ transactions: z.number(), ms: z.number().nullable() });
const replicaSchema = z
  .object({
    id: z.string(),
    url: z.string().nullable(),
    connected: z.boolean(),
    candidate: z.boolean(),
    position: z.object({ txid: z.number().int(), checksum: z.string().nullable() }),
    lag: z.object({ transactions: z.number(), bytes: z.number(), ms: z.number() }),
    last_ack_at: z.string().nullable(),
  })
  .openapi('ReplicaStatus');
const statusSchema = z
  .object({
    node_id: z.string(),
    ha_mode: z.enum(['standalone', 'master', 'replica']),
    master_url: z.string().nullable(),
    position: positionSchema.nullable(),
    lag: lagSchema,
    replicas: z.array(replicaSchema),
    sync: syncSchema.optional(),
    election: electionSchema.optional(),
  })
  .openapi('ClusterStatus');

const finite = (n: number): number | null => (Number.isFinite(n) ? Math.round(n * 1000) / 1000 : null);

/** Operator views of the HA cluster: this node's role and, on a master, every replica. */
export function registerClusterStatusRoutes(app: App, { config, role }: Deps): void {
  app.openapi(
    createRoute({
      method: 'get',
      path: '/cluster/status',
      tags: ['HA'],
      security,
      summary: 'This node’s role, position and lag; on a master, its replicas (operator)',
      responses: { 200: ok(statusSchema, 'Status'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      const lag = role.lag();
      return c.json(
        {
          node_id: config.nodeId,
          ha_mode: role.mode,
          master_url: role.masterUrl ?? null,
          position: role.position ?? null,
          lag: { transactions: lag.transactions, ms: finite(lag.ms) },
          replicas: role.replicas(),
          ...syncAndElection(role),
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/cluster/replicas',
      tags: ['HA'],
      security,
      summary: 'Each replica’s id, URL, acknowledged position, lag and last ack (operator, on the master)',
      responses: { 200: ok(z.object({ replicas: z.array(replicaSchema) }), 'Replicas'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json({ replicas: role.replicas() }, 200);
    },
  );
}
