import { createRoute, z } from '@hono/zod-openapi';
import { clusterScope, nodeWriteScope } from '../../domain/auth.js';
import { clusterOfNode } from '../../domain/nodes.js';
import { assignLighthouse, getTopology, setRelay, unassignLighthouse } from '../../domain/topology.js';
import { idSchema, lighthouseAssignSchema, relayAssignSchema } from '../../domain/validation.js';
import type { App, Deps } from '../context.js';
import { errors, idParams, jsonBody, ok, security, topologySchema } from '../schemas.js';

const tags = ['Topology'];
const assigned = ok(topologySchema, 'The cluster’s topology after the change; config_version has moved');

export function registerTopologyRoutes(app: App, { store }: Deps): void {
  const clusterOf = (id: string): string => clusterOfNode(store, id);

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/topology',
      tags,
      security,
      summary: 'Lighthouses and relays of the caller’s cluster',
      request: {
        query: z.object({
          cluster_id: idSchema.optional().openapi({ param: { name: 'cluster_id', in: 'query' }, description: 'Operator token only' }),
        }),
      },
      responses: { 200: ok(topologySchema, 'Topology'), ...errors },
    }),
    (c) => c.json(getTopology(store, clusterScope(c.get('principal'), c.req.valid('query').cluster_id)), 200),
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/topology/lighthouses',
      tags,
      security,
      summary: 'Make a node a lighthouse at a public address (operator or admin node)',
      request: jsonBody(lighthouseAssignSchema),
      responses: { 200: assigned, ...errors },
    }),
    (c) => {
      const body = c.req.valid('json');
      return c.json(assignLighthouse(store, nodeWriteScope(c.get('principal'), body.node_id, clusterOf), body), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/api/v1/topology/lighthouses/{id}',
      tags,
      security,
      summary: 'Stop a node being a lighthouse (operator or admin node)',
      request: { params: idParams },
      responses: { 200: assigned, ...errors },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      return c.json(unassignLighthouse(store, nodeWriteScope(c.get('principal'), id, clusterOf), id), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/topology/relays',
      tags,
      security,
      summary: 'Make a node a relay (operator or admin node)',
      request: jsonBody(relayAssignSchema),
      responses: { 200: assigned, ...errors },
    }),
    (c) => {
      const { node_id } = c.req.valid('json');
      return c.json(setRelay(store, nodeWriteScope(c.get('principal'), node_id, clusterOf), node_id, true), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/api/v1/topology/relays/{id}',
      tags,
      security,
      summary: 'Stop a node being a relay (operator or admin node)',
      request: { params: idParams },
      responses: { 200: assigned, ...errors },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      return c.json(setRelay(store, nodeWriteScope(c.get('principal'), id, clusterOf), id, false), 200);
    },
  );
}
