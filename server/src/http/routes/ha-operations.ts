import { createRoute, z } from '@hono/zod-openapi';
import { requireOperator } from '../../domain/auth.js';
import { DomainError } from '../../domain/errors.js';
import type { App, Deps } from '../context.js';
import { errors, jsonBody, ok, positionSchema, security } from '../schemas.js';

const tags = ['HA'];

const handoverSchema = z
  .object({ node_id: z.string(), url: z.string(), epoch: z.number().int(), position: positionSchema })
  .openapi('Handover');
const leaderSchema = z
  .object({
    node_id: z.string().nullable(),
    url: z.string().nullable(),
    epoch: z.number().int().openapi({ description: 'The newest epoch this node knows of' }),
    known_by: z.string().openapi({ description: 'The node that answered' }),
    ha_state: z.string(),
  })
  .openapi('Leader');
const peerSchema = z
  .object({
    id: z.string().nullable(),
    role: z.enum(['master', 'replica', 'standalone']),
    self: z.boolean(),
    url: z.string().nullable(),
    state: z.string().nullable().openapi({ description: 'The HA state, for this node; null for others' }),
    connected: z.boolean().nullable(),
    candidate: z.boolean().nullable(),
    position: z.object({ epoch: z.number().int().nullable(), txid: z.number().int(), checksum: z.string().nullable() }).nullable(),
    lag: z.object({ transactions: z.number(), ms: z.number().nullable() }).nullable(),
  })
  .openapi('Peer');
const idParam = z.object({ id: z.string().min(1).max(128).openapi({ param: { name: 'id', in: 'path' } }) });

const finite = (n: number): number | null => (Number.isFinite(n) ? Math.round(n * 1000) / 1000 : null);

/** Operator actions on this node's role: promote, demote, switchover, and what it knows of the cluster. */
export function registerClusterOperationRoutes(app: App, { config, role, node }: Deps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/cluster/promote',
      tags,
      security,
      summary: 'Make this replica the master, on a new epoch (operator). 409 NOT_CAUGHT_UP unless it holds all it last heard the master had, or force',
      request: jsonBody(z.object({ force: z.boolean().optional() })),
      responses: { 200: ok(handoverSchema, 'This node is master now'), ...errors },
    }),
    async (c) => {
      requireOperator(c.get('principal'));
      return c.json(await node.promote({ force: c.req.valid('json').force ?? false }), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/cluster/demote',
      tags,
      security,
      summary: 'Make this master a replica of master_url (on a replica: follow master_url instead) (operator)',
      request: jsonBody(z.object({ master_url: z.url({ protocol: /^https?$/ }) })),
      responses: { 200: ok(z.object({ ha_state: z.string(), master_url: z.string() }), 'Following master_url'), ...errors },
    }),
    async (c) => {
      requireOperator(c.get('principal'));
      const { master_url } = c.req.valid('json');
      await node.demote(master_url);
      return c.json({ ha_state: role.state, master_url: role.masterUrl ?? master_url }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/cluster/switchover',
      tags,
      security,
      summary: 'Hand the master role to a caught-up replica (`to`, or the most caught-up candidate), then follow it (operator)',
      request: jsonBody(z.object({ to: z.string().min(1).max(128).optional() })),
      responses: { 200: ok(handoverSchema, 'The new master'), ...errors },
    }),
    async (c) => {
      requireOperator(c.get('principal'));
      return c.json(await node.switchover(c.req.valid('json').to), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/cluster/leader',
      tags,
      security,
      summary: 'The master as this node knows it (operator)',
      responses: { 200: ok(leaderSchema, 'The master'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json({ node_id: role.masterNodeId ?? null, url: role.masterUrl ?? null, epoch: role.epoch, known_by: config.nodeId, ha_state: role.state }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/cluster/peers',
      tags,
      security,
      summary: 'Every node this node knows: role, URL, position, lag and candidacy (operator). A master knows its replicas; a replica its master',
      responses: { 200: ok(z.object({ peers: z.array(peerSchema) }), 'Peers, this node first'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      const pos = role.position;
      const lag = role.lag();
      const self = {
        id: config.nodeId,
        role: role.mode,
        self: true,
        url: role.selfUrl,
        state: role.state,
        connected: null,
        candidate: config.ha.candidate,
        position: pos ?? null,
        lag: { transactions: lag.transactions, ms: finite(lag.ms) },
      };
      const others = role.master
        ? role.replicas().map((r) => ({
            id: r.id,
            role: 'replica' as const,
            self: false,
            url: r.url,
            state: null,
            connected: r.connected,
            candidate: r.candidate,
            position: { epoch: null, ...r.position },
            lag: { transactions: r.lag.transactions, ms: finite(r.lag.ms) },
          }))
        : role.replica && role.knownMaster
          ? [
              {
                id: role.knownMaster.nodeId ?? null,
                role: 'master' as const,
                self: false,
                url: role.knownMaster.url,
                state: null,
                connected: role.replica.connected,
                candidate: null,
                position: role.replica.masterPosition ?? null,
                lag: null,
              },
            ]
          : [];
      return c.json({ peers: [self, ...others] }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/cluster/peers/{id}',
      tags,
      security,
      summary: 'Forget a replica, on the master (operator). 409 MIN_REPLICAS when fewer than NEBULAGC_MIN_REPLICAS would stay connected',
      request: { params: idParam },
      responses: { 200: ok(z.object({ forgotten: z.string() }), 'Forgotten'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      const { id } = c.req.valid('param');
      const master = role.master;
      if (!master) throw new DomainError('CONFLICT', `only the master keeps a list of replicas to forget (this node is ${role.state})`);
      const view = master.replicas.get(id);
      if (!view) throw new DomainError('NOT_FOUND', `no replica ${id} is known to this master`);
      // A disconnected replica changes nothing for the minimum; a connected one would be one less.
      const left = master.connectedReplicas - 1;
      if (view.connected && left < config.ha.minReplicas) {
        throw new DomainError('MIN_REPLICAS', `forgetting ${id} would leave ${left} connected replica(s), fewer than NEBULAGC_MIN_REPLICAS=${config.ha.minReplicas}`);
      }
      master.forget(id);
      return c.json({ forgotten: id }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/cluster/snapshot',
      tags,
      security,
      summary: 'Write a consistent copy of the database now, beside it; answers its path and position (operator)',
      responses: { 200: ok(z.object({ path: z.string(), position: positionSchema, bytes: z.number().int() }), 'Written'), ...errors },
    }),
    async (c) => {
      requireOperator(c.get('principal'));
      return c.json(await node.backup(), 200);
    },
  );
}
