import { createRoute, z } from '@hono/zod-openapi';
import { clusterScope, requireNode, requireOperator } from '../../domain/auth.js';
import { getBlocklist } from '../../domain/blocklist.js';
import { pkiFrom, rotateClusterCa } from '../../domain/cluster-ca.js';
import { enrollNode } from '../../domain/enrollment.js';
import { enrollSchema, idSchema, PRIVATE_KEY_REFUSED } from '../../domain/validation.js';
import { invalid } from '../../domain/errors.js';
import type { App, Deps } from '../context.js';
import { blocklistSchema, clusterSchema, enrollmentSchema, errors, idParams, jsonBody, ok, pkiErrors, security } from '../schemas.js';

const tags = ['PKI'];

/** Cluster PKI: enrollment (signing a node's own public key), the blocklist, CA rotation. */
export function registerPkiRoutes(app: App, { store, config }: Deps): void {
  const pki = pkiFrom(config.pki);

  // Whatever field it came in, a private key gets the message that says why, rather than
  // "unrecognized key". Runs after jsonBody(), which has parsed (and cached) the body.
  app.use('/api/v1/enroll', async (c, next) => {
    if (c.req.method === 'POST' && /json/i.test(c.req.header('content-type') ?? '')) {
      if (JSON.stringify(await c.req.json()).includes('PRIVATE KEY')) throw invalid(PRIVATE_KEY_REFUSED);
    }
    await next();
  });

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/enroll',
      tags,
      security,
      summary: 'Sign a host certificate for the calling node’s public key (node token)',
      description:
        'The certificate carries the node’s name, overlay_ip/prefix of the cluster network, groups, and its routes as subnets. ' +
        'Enrolling again renews it; the previous certificate is blocklisted when it granted anything the new one does not.',
      request: jsonBody(enrollSchema),
      responses: { 200: ok(enrollmentSchema, 'The signed certificate'), ...pkiErrors },
    }),
    async (c) => {
      const node = requireNode(c.get('principal'));
      return c.json(await enrollNode(store, pki, node.clusterId, node.id, c.req.valid('json').public_key), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/pki/blocklist',
      tags,
      security,
      summary: 'Fingerprints of the cluster’s revoked certificates (any token of the cluster)',
      request: {
        query: z.object({
          cluster_id: idSchema.optional().openapi({ param: { name: 'cluster_id', in: 'query' }, description: 'Operator token only' }),
        }),
      },
      responses: { 200: ok(blocklistSchema, 'The blocklist'), ...errors },
    }),
    (c) => c.json(getBlocklist(store, clusterScope(c.get('principal'), c.req.valid('query').cluster_id)), 200),
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/clusters/{id}/rotate-ca',
      tags,
      security,
      summary: 'Replace the cluster CA with a new one (operator); every node must enroll again',
      description:
        'A hard cut-over: node certificates and the blocklist are dropped, since nothing the old CA signed is trusted any more; config_version moves.',
      request: { params: idParams },
      responses: { 200: ok(clusterSchema, 'The cluster with its new ca_cert'), ...pkiErrors },
    }),
    async (c) => {
      requireOperator(c.get('principal'));
      return c.json(await rotateClusterCa(store, pki, c.req.valid('param').id), 200);
    },
  );
}
