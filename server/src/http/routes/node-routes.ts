import { createRoute, z } from '@hono/zod-openapi';
import { clusterScope, requireNode } from '../../domain/auth.js';
import { getNodeRoutes, listClusterRoutes, replaceNodeRoutes } from '../../domain/routes.js';
import { idSchema, routesReplaceSchema } from '../../domain/validation.js';
import type { App, Deps } from '../context.js';
import { errors, jsonBody, nodeRoutesSchema, ok, security } from '../schemas.js';

const tags = ['Routes'];

/** Unsafe routes a node advertises (subnets behind it), as the node itself sees them. */
export function registerNodeRouteRoutes(app: App, { store }: Deps): void {
  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/routes',
      tags,
      security,
      summary: 'The calling node’s advertised routes (node token)',
      responses: { 200: ok(nodeRoutesSchema, 'Routes'), ...errors },
    }),
    (c) => {
      const node = requireNode(c.get('principal'));
      return c.json(getNodeRoutes(store, node.clusterId, node.id), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'put',
      path: '/api/v1/routes',
      tags,
      security,
      summary: 'Replace the calling node’s advertised routes (node token)',
      request: jsonBody(routesReplaceSchema),
      responses: { 200: ok(nodeRoutesSchema, 'Routes after the change'), ...errors },
    }),
    (c) => {
      const node = requireNode(c.get('principal'));
      return c.json(replaceNodeRoutes(store, node.clusterId, node.id, c.req.valid('json').routes), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/routes/cluster',
      tags,
      security,
      summary: 'Every route advertised in the cluster',
      request: {
        query: z.object({
          cluster_id: idSchema.optional().openapi({ param: { name: 'cluster_id', in: 'query' }, description: 'Operator token only' }),
        }),
      },
      responses: { 200: ok(z.object({ routes: z.array(nodeRoutesSchema) }), 'Routes by node'), ...errors },
    }),
    (c) => c.json({ routes: listClusterRoutes(store, clusterScope(c.get('principal'), c.req.valid('query').cluster_id)) }, 200),
  );
}
