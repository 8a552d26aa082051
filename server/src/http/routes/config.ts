import { createRoute, z, type RouteConfig } from '@hono/zod-openapi';
import { clusterScope, describe, requireClusterAdmin } from '../../domain/auth.js';
import { defaultBundleLimits, inspectBundle, readLimited } from '../../domain/bundle-archive.js';
import {
  deleteBundle,
  getBundle,
  getBundleMeta,
  getConfigVersion,
  listBundles,
  storeBundle,
  type BundleMeta,
  type ConfigVersion,
} from '../../domain/bundles.js';
import { nodeBundle, nodeConfigState, type ServedBundle } from '../../domain/render/node-bundle.js';
import { memo, type Store } from '../../domain/store.js';
import { DomainError, notFound } from '../../domain/errors.js';
import { clusterOfNode } from '../../domain/nodes.js';
import { idSchema } from '../../domain/validation.js';
import type { App, AppContext, Deps } from '../context.js';
import { validationFailed } from '../errors.js';
import { reply } from '../middleware/request-id.js';
import { holdMs, indexSchema, waitSchema } from '../blocking/wait-param.js';
import { bundleMetaSchema, configVersionSchema, errors, ok, pageQuery, security } from '../schemas.js';

const tags = ['Config'];
const clusterQuery = {
  cluster_id: idSchema.optional().openapi({ param: { name: 'cluster_id', in: 'query' }, description: 'Operator token only' }),
};
const versionParams = z.object({
  version: z.coerce.number().int().positive().openapi({ param: { name: 'version', in: 'path' } }),
});
const gzipContent = { 'application/gzip': { schema: z.string().openapi({ format: 'binary' }) } };

/** RFC 9110 If-None-Match: a list of (possibly weak) tags, or "*". */
export function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  if (header === etag) return true;
  if (header.trim() === '*') return true;
  return header.split(',').some((t) => t.trim().replace(/^W\//, '') === etag);
}

type BundleHeaders = {
  etag: string;
  'cache-control': string;
  'x-nebulagc-bundle-version': string;
  'x-nebulagc-bundle-sha256': string;
};

// getBundleMeta() answers from a cache until the database changes, so the same object comes
// back poll after poll; its headers are built once per object.
const bundleHeaders = new WeakMap<BundleMeta, BundleHeaders>();

function headersOf(meta: BundleMeta): BundleHeaders {
  let h = bundleHeaders.get(meta);
  if (!h) {
    h = {
      etag: `"${meta.sha256}"`,
      'cache-control': 'private, no-cache',
      'x-nebulagc-bundle-version': String(meta.version),
      'x-nebulagc-bundle-sha256': meta.sha256,
    };
    bundleHeaders.set(meta, h);
  }
  return h;
}

/** Answers a bundle download; a matching If-None-Match costs one small row, never the blob. */
function sendBundle(c: AppContext, store: Store, clusterId: string, version?: number): Response {
  const meta = getBundleMeta(store, clusterId, version);
  const headers = headersOf(meta);
  if (etagMatches(c.req.header('if-none-match'), headers.etag)) return reply(c, null, 304, headers);
  const { data } = getBundle(store, clusterId, meta.version);
  return reply(c, new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength), 200, {
    ...headers,
    'content-type': 'application/gzip',
  });
}

const servedHeaders = new WeakMap<ServedBundle, BundleHeaders & { 'x-nebulagc-index': string }>();

/** A node's own rendered bundle (config.yml, ca.crt, host.crt), built once per node version. */
async function sendNodeBundle(c: AppContext, store: Store, nodeId: string): Promise<Response> {
  const served = await nodeBundle(store, nodeId);
  let headers = servedHeaders.get(served);
  if (!headers) {
    const version = String(served.version);
    headers = {
      etag: `"${served.sha256}"`,
      'cache-control': 'private, no-cache',
      'x-nebulagc-bundle-version': version,
      'x-nebulagc-bundle-sha256': served.sha256,
      'x-nebulagc-index': version,
    };
    servedHeaders.set(served, headers);
  }
  if (etagMatches(c.req.header('if-none-match'), headers.etag)) return reply(c, null, 304, headers);
  const { body } = served;
  return reply(c, new Uint8Array(body.buffer as ArrayBuffer, body.byteOffset, body.byteLength), 200, {
    ...headers,
    'content-type': 'application/gzip',
  });
}

/**
 * The version poll as a node sees it: the cluster's fields plus its own version and content
 * hash, both stored by the write that rendered it, so a woken poll renders nothing.
 */
function nodeVersionReply(store: Store, nodeId: string, clusterId: string): { body: string; headers: Record<string, string> } {
  return memo(store, `node-version-reply:${nodeId}`, () => {
    const state = nodeConfigState(store, nodeId);
    return {
      body: JSON.stringify({ ...getConfigVersion(store, clusterId), version: state.version, config_sha256: state.config_sha256 }),
      headers: { ...JSON_TYPE, 'x-nebulagc-index': String(state.version) },
    };
  });
}

// The same for the config version, serialized once per cached object.
const versionJson = new WeakMap<ConfigVersion, string>();

function versionBody(v: ConfigVersion): string {
  let json = versionJson.get(v);
  if (json === undefined) {
    json = JSON.stringify(v);
    versionJson.set(v, json);
  }
  return json;
}

const JSON_TYPE = { 'content-type': 'application/json' };
const bundleQuerySchema = z.object({
  ...clusterQuery,
  node_id: idSchema.optional().openapi({
    param: { name: 'node_id', in: 'query' },
    description: 'Operator or admin node: that node’s rendered bundle instead of the template',
  }),
});
const versionQuerySchema = z.object({
  ...clusterQuery,
  index: indexSchema.optional().openapi({
    param: { name: 'index', in: 'query' },
    type: 'integer',
    description: 'Blocking poll (node token): hold the request until the node’s version differs from this',
  }),
  wait: waitSchema.optional().openapi({
    param: { name: 'wait', in: 'query' },
    type: 'string',
    description: 'Longest hold, e.g. 500ms, 30s, 5m (capped by NEBULAGC_POLL_MAX_WAIT_MS, its default); up to wait/16 of jitter is added',
  }),
});

/**
 * The daemon polls are registered for the OpenAPI document as usual, but served by a plain
 * handler: zod-openapi's validator middleware (async, several awaits, parses the query into
 * new objects) costs more than the rest of the poll. The query is checked here with the same
 * schema, the same way, and only when there is one; daemons send none.
 */
function pollRoute<S extends z.ZodType<{ cluster_id?: string | undefined }>>(
  app: App,
  route: RouteConfig & { method: 'get' },
  schema: S,
  handler: (c: AppContext, query: Partial<z.output<S>>) => Response | Promise<Response>,
): void {
  app.openAPIRegistry.registerPath(route);
  app.get(route.path, (c) => {
    if (!c.req.url.includes('?')) return handler(c, {});
    const query = Object.fromEntries(Object.entries(c.req.queries()).map(([k, v]) => [k, v.length === 1 ? v[0] : v]));
    const parsed = schema.safeParse(query);
    if (!parsed.success) return validationFailed(c, parsed.error);
    return handler(c, parsed.data);
  });
}

export function registerConfigRoutes(app: App, { store, config, waiters }: Deps): void {
  const limits = defaultBundleLimits(config.maxBundleBytes);

  /** A blocking poll is held only while the node's version is still the one the client has. */
  const versionForNode = (c: AppContext, nodeId: string, clusterId: string, index?: number, wait?: number): Response | Promise<Response> => {
    const answer = (): Response => {
      const { body, headers } = nodeVersionReply(store, nodeId, clusterId);
      return reply(c, body, 200, headers);
    };
    if (index === undefined || nodeConfigState(store, nodeId).version !== index) return answer();
    return waiters.wait(nodeId, index, performance.now() + holdMs(wait, config.pollMaxWaitMs), c.req.raw.signal).then(answer);
  };

  pollRoute(
    app,
    createRoute({
      method: 'get',
      path: '/api/v1/config/version',
      tags,
      security,
      summary: 'The config version, for daemons to poll; with a node token, the node’s own version, and blocking with ?index=',
      description:
        'With a node token the answer carries `version` (the node’s rendered-config version, also in `X-NebulaGC-Index`) and `config_sha256` (a hash of the node’s rendered content: it changes exactly when the bundle’s content does; not the sha256 of the archive). `?index=N&wait=30s` answers at once when the version differs from N, else holds the request until it changes or the wait runs out; 200 either way.',
      request: { query: versionQuerySchema },
      responses: { 200: ok(configVersionSchema, 'Current version'), ...errors },
    }),
    versionQuerySchema,
    (c, q) => {
      const principal = c.get('principal');
      const clusterId = clusterScope(principal, q.cluster_id);
      if (principal.kind === 'node') return versionForNode(c, principal.id, clusterId, q.index, q.wait);
      return reply(c, versionBody(getConfigVersion(store, clusterId)), 200, JSON_TYPE);
    },
  );

  pollRoute(
    app,
    createRoute({
      method: 'get',
      path: '/api/v1/config/bundle',
      tags,
      security,
      summary: 'Download the current bundle: a node gets its own rendered one; honours If-None-Match with 304',
      description:
        'A node token gets the tar.gz rendered for it (config.yml, ca.crt, host.crt; 409 NOT_ENROLLED before it enrolls), with `X-NebulaGC-Index`. Operator and cluster tokens get the uploaded template bundle. `?node_id=` lets the operator or an admin node fetch another node’s render.',
      request: { query: bundleQuerySchema },
      responses: {
        200: { content: gzipContent, description: 'The bundle (tar.gz), with ETag' },
        304: { description: 'Not modified' },
        ...errors,
      },
    }),
    bundleQuerySchema,
    (c, q) => {
      const principal = c.get('principal');
      if (q.node_id !== undefined && !(principal.kind === 'node' && principal.id === q.node_id)) {
        const clusterId = requireClusterAdmin(principal, q.cluster_id ?? (principal.kind === 'operator' ? clusterOfNode(store, q.node_id) : undefined));
        if (nodeConfigState(store, q.node_id).cluster_id !== clusterId) throw notFound('node');
        return sendNodeBundle(c, store, q.node_id);
      }
      const clusterId = clusterScope(principal, q.cluster_id);
      if (principal.kind === 'node') return sendNodeBundle(c, store, principal.id);
      return sendBundle(c, store, clusterId);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/config/bundle',
      tags,
      security,
      summary: 'Upload a new bundle version (admin node or operator)',
      description:
        'A gzip tar with config.yml (a YAML mapping) and ca.crt. Links, absolute paths and ".." are refused. The size limit is enforced while the body streams in; a refused bundle leaves the current one untouched.',
      request: { query: z.object(clusterQuery), body: { content: gzipContent, required: true } },
      responses: { 201: ok(bundleMetaSchema, 'Stored as the new current version'), ...errors, 415: errors[400] },
    }),
    async (c) => {
      const principal = c.get('principal');
      const clusterId = requireClusterAdmin(principal, c.req.valid('query').cluster_id);
      const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
      if (!['application/gzip', 'application/x-gzip', 'application/octet-stream'].includes(type)) {
        throw new DomainError('UNSUPPORTED_MEDIA_TYPE', 'send the bundle as application/gzip');
      }
      const declared = Number(c.req.header('content-length') ?? NaN);
      if (declared > limits.maxBytes) throw new DomainError('PAYLOAD_TOO_LARGE', `bundle exceeds ${limits.maxBytes} bytes`);
      const body = c.req.raw.body;
      if (!body) throw new DomainError('INVALID_BUNDLE', 'request has no body');
      const data = await readLimited(body as unknown as AsyncIterable<Uint8Array>, limits.maxBytes);
      const inspected = await inspectBundle(data, limits);
      return c.json(storeBundle(store, clusterId, inspected, describe(principal)), 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/config/bundles',
      tags,
      security,
      summary: 'List bundle versions, newest first (admin node or operator)',
      request: { query: z.object({ ...clusterQuery, ...pageQuery }) },
      responses: { 200: ok(z.object({ bundles: z.array(bundleMetaSchema) }), 'Versions'), ...errors },
    }),
    (c) => {
      const { cluster_id, limit, offset } = c.req.valid('query');
      const clusterId = requireClusterAdmin(c.get('principal'), cluster_id);
      return c.json({ bundles: listBundles(store, clusterId, { limit, offset }) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/config/bundles/{version}',
      tags,
      security,
      summary: 'Download one bundle version (admin node or operator)',
      request: { params: versionParams, query: z.object(clusterQuery) },
      responses: {
        200: { content: gzipContent, description: 'The bundle (tar.gz), with ETag' },
        304: { description: 'Not modified' },
        ...errors,
      },
    }),
    (c) => {
      const clusterId = requireClusterAdmin(c.get('principal'), c.req.valid('query').cluster_id);
      return sendBundle(c, store, clusterId, c.req.valid('param').version);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/api/v1/config/bundles/{version}',
      tags,
      security,
      summary: 'Delete an old bundle version; the current one cannot be deleted (admin node or operator)',
      request: { params: versionParams, query: z.object(clusterQuery) },
      responses: { 204: { description: 'Deleted' }, ...errors },
    }),
    (c) => {
      const clusterId = requireClusterAdmin(c.get('principal'), c.req.valid('query').cluster_id);
      deleteBundle(store, clusterId, c.req.valid('param').version);
      return c.body(null, 204);
    },
  );
}
