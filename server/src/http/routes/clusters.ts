import { createRoute, z } from '@hono/zod-openapi';
import { requireOperator } from '../../domain/auth.js';
import { createClusterWithCa, pkiFrom } from '../../domain/cluster-ca.js';
import { listBuiltinLighthouses } from '../../domain/builtin-lighthouses.js';
import { deleteCluster, getCluster, listClusters, rotateClusterToken, updateCluster } from '../../domain/clusters.js';
import { clusterCreateSchema, clusterUpdateSchema, idSchema } from '../../domain/validation.js';
import type { App, Deps } from '../context.js';
import {
  builtinLighthouseSchema,
  clusterSchema,
  errors,
  idParams,
  jsonBody,
  localLighthouseSchema,
  ok,
  pageQuery,
  pkiErrors,
  security,
  tokenSchema,
} from '../schemas.js';

const tags = ['Clusters'];

export function registerClusterRoutes(app: App, { store, config, lighthouses }: Deps): void {
  const pki = pkiFrom(config.pki);

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/clusters',
      tags,
      security,
      summary: 'Create a cluster with its Nebula CA (operator); returns its cluster token once',
      description: 'Without ca_cert/ca_key, nebula-cert makes a CA limited to overlay_cidr (default 10.42.0.0/16).',
      request: jsonBody(clusterCreateSchema),
      responses: { 201: ok(z.object({ cluster: clusterSchema, token: z.string() }), 'Created'), ...pkiErrors },
    }),
    async (c) => {
      requireOperator(c.get('principal'));
      return c.json(await createClusterWithCa(store, pki, c.req.valid('json')), 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/clusters',
      tags,
      security,
      summary: 'List clusters, optionally of one tenant (operator)',
      request: {
        query: z.object({
          tenant_id: idSchema.optional().openapi({ param: { name: 'tenant_id', in: 'query' } }),
          ...pageQuery,
        }),
      },
      responses: { 200: ok(z.object({ clusters: z.array(clusterSchema) }), 'Clusters'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      const { tenant_id, limit, offset } = c.req.valid('query');
      return c.json({ clusters: listClusters(store, { tenant_id }, { limit, offset }) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/clusters/{id}',
      tags,
      security,
      summary: 'Get a cluster (operator)',
      request: { params: idParams },
      responses: { 200: ok(clusterSchema, 'The cluster'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json(getCluster(store, c.req.valid('param').id), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'patch',
      path: '/api/v1/clusters/{id}',
      tags,
      security,
      summary: 'Turn built-in lighthouses on or off, or move them to another UDP port (operator)',
      description:
        'provide_lighthouse: every control-plane server runs a Nebula lighthouse for the cluster on lighthouse_port, and every host’s config lists them. ' +
        'Two clusters that provide lighthouses cannot share a port (409). config_version moves.',
      request: { params: idParams, ...jsonBody(clusterUpdateSchema) },
      responses: { 200: ok(clusterSchema, 'The cluster'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json(updateCluster(store, c.req.valid('param').id, c.req.valid('json')), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/clusters/{id}/lighthouses',
      tags,
      security,
      summary: 'The cluster’s built-in lighthouses, and the one this server runs (operator)',
      request: { params: idParams },
      responses: {
        200: ok(
          z.object({
            cluster_id: z.string(),
            provide_lighthouse: z.boolean(),
            lighthouses: z.array(builtinLighthouseSchema),
            local: localLighthouseSchema.nullable().openapi({ description: 'The nebula process on the server that answered; null when none runs here' }),
          }),
          'Built-in lighthouses',
        ),
        ...errors,
      },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      const cluster = getCluster(store, c.req.valid('param').id);
      return c.json(
        {
          cluster_id: cluster.id,
          provide_lighthouse: cluster.provide_lighthouse,
          lighthouses: listBuiltinLighthouses(store, cluster.id),
          local: lighthouses.status(cluster.id),
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/api/v1/clusters/{id}',
      tags,
      security,
      summary: 'Delete a cluster with its nodes and bundles (operator)',
      request: { params: idParams },
      responses: { 204: { description: 'Deleted' }, ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      deleteCluster(store, c.req.valid('param').id);
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/clusters/{id}/rotate-token',
      tags,
      security,
      summary: 'Replace the cluster token (operator); the old one stops working at once',
      request: { params: idParams },
      responses: { 200: ok(tokenSchema, 'The new token, shown once'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json({ token: rotateClusterToken(store, c.req.valid('param').id) }, 200);
    },
  );
}
