import { createRoute, z } from '@hono/zod-openapi';
import { clusterScope, nodeReadScope, nodeWriteScope, requireClusterAdmin, requireNodeCreator } from '../../domain/auth.js';
import {
  clusterOfNode,
  createNode,
  deleteNode,
  getNode,
  listNodes,
  rotateNodeToken,
  updateNode,
  type Node,
} from '../../domain/nodes.js';
import { idSchema, nameSchema, nodeCreateSchema, nodeUpdateSchema } from '../../domain/validation.js';
import type { App, Deps } from '../context.js';
import { boolQuery, errors, idParams, jsonBody, nodeSchema, ok, pageQuery, security, tokenSchema } from '../schemas.js';

const tags = ['Nodes'];
const q = (name: string) => ({ param: { name, in: 'query' as const } });

export function registerNodeRoutes(app: App, { store, heartbeats }: Deps): void {
  const clusterOf = (id: string): string => clusterOfNode(store, id);
  // A beat still waiting in the coalescer is newer than the stored one.
  const fresh = (n: Node): Node => ({ ...n, last_seen_at: heartbeats.pendingFor(n.id) ?? n.last_seen_at });

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/nodes',
      tags,
      security,
      summary: 'Create a node; returns its token once',
      description:
        'The operator passes cluster_id; an admin node creates in its own cluster; the cluster token may create non-admin nodes.',
      request: jsonBody(nodeCreateSchema),
      responses: { 201: ok(z.object({ node: nodeSchema, token: z.string() }), 'Created'), ...errors },
    }),
    (c) => {
      const body = c.req.valid('json');
      const clusterId = requireNodeCreator(c.get('principal'), body.cluster_id, body.is_admin ?? false);
      return c.json(createNode(store, clusterId, body), 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/nodes',
      tags,
      security,
      summary: 'List a cluster’s nodes, with filters',
      request: {
        query: z.object({
          cluster_id: idSchema.optional().openapi(q('cluster_id')),
          name: nameSchema.optional().openapi(q('name')),
          is_admin: boolQuery.optional().openapi(q('is_admin')),
          is_lighthouse: boolQuery.optional().openapi(q('is_lighthouse')),
          is_relay: boolQuery.optional().openapi(q('is_relay')),
          ...pageQuery,
        }),
      },
      responses: { 200: ok(z.object({ nodes: z.array(nodeSchema) }), 'Nodes by name'), ...errors },
    }),
    (c) => {
      const { cluster_id, limit, offset, ...filter } = c.req.valid('query');
      const principal = c.get('principal');
      const clusterId = principal.kind === 'cluster' ? clusterScope(principal, cluster_id) : requireClusterAdmin(principal, cluster_id);
      return c.json({ nodes: listNodes(store, clusterId, filter, { limit, offset }).map(fresh) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/nodes/{id}',
      tags,
      security,
      summary: 'Get a node',
      request: { params: idParams },
      responses: { 200: ok(nodeSchema, 'The node'), ...errors },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      return c.json(fresh(getNode(store, nodeReadScope(c.get('principal'), id, clusterOf), id)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'patch',
      path: '/api/v1/nodes/{id}',
      tags,
      security,
      summary: 'Update a node’s name, MTU, routes or IPs (operator or admin node)',
      request: { params: idParams, ...jsonBody(nodeUpdateSchema) },
      responses: { 200: ok(nodeSchema, 'The updated node'), ...errors },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      const clusterId = nodeWriteScope(c.get('principal'), id, clusterOf);
      return c.json(fresh(updateNode(store, clusterId, id, c.req.valid('json'))), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/api/v1/nodes/{id}',
      tags,
      security,
      summary: 'Delete a node (operator or admin node)',
      request: { params: idParams },
      responses: { 204: { description: 'Deleted' }, ...errors },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      deleteNode(store, nodeWriteScope(c.get('principal'), id, clusterOf), id);
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/nodes/{id}/rotate-token',
      tags,
      security,
      summary: 'Replace a node’s token (operator or admin node); the old one stops working at once',
      request: { params: idParams },
      responses: { 200: ok(tokenSchema, 'The new token, shown once'), ...errors },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      return c.json({ token: rotateNodeToken(store, nodeWriteScope(c.get('principal'), id, clusterOf), id) }, 200);
    },
  );
}
