import { OpenAPIHono } from '@hono/zod-openapi';
import { bodyLimit } from 'hono/body-limit';
import { DomainError } from '../domain/errors.js';
import { VERSION } from '../version.js';
import type { App, AppEnv, Deps } from './context.js';
import { errorResponse, handleError, validationFailed } from './errors.js';
import { registerHealthRoutes } from './health.js';
import { requireAuth } from './middleware/auth.js';
import { jsonBody } from './middleware/json-body.js';
import { observe } from './middleware/observe.js';
import { ipRateLimit, RateLimiter } from './middleware/rate-limit.js';
import { requestId } from './middleware/request-id.js';
import { requireReplicationSecret } from './middleware/internal-auth.js';
import { masterAnswer, roleGate } from './middleware/role-gate.js';
import { registerClusterOperationRoutes } from './routes/ha-operations.js';
import { registerClusterStatusRoutes } from './routes/ha-status.js';
import { registerReplicationRoutes } from './routes/replication.js';
import { registerClusterRoutes } from './routes/clusters.js';
import { registerConfigRoutes } from './routes/config.js';
import { registerHeartbeatRoutes } from './routes/heartbeat.js';
import { registerNodeRouteRoutes } from './routes/node-routes.js';
import { registerNodeRoutes } from './routes/nodes.js';
import { registerOperatorRoutes } from './routes/operator.js';
import { registerPkiRoutes } from './routes/pki.js';
import { registerTenantRoutes } from './routes/tenants.js';
import { registerTopologyRoutes } from './routes/topology.js';

const BODYLESS = new Set(['GET', 'HEAD']);
const isBundleUpload = (method: string, path: string): boolean => method === 'POST' && path === '/api/v1/config/bundle';

/** The whole HTTP surface, with the middleware order in one place. */
export function createApp(deps: Deps): App {
  const { config, store, metrics, log, role } = deps;
  const app: App = new OpenAPIHono<AppEnv>({
    defaultHook: (result, c) => (result.success ? undefined : validationFailed(c, result.error)),
  });

  const limiters = {
    ip: new RateLimiter(config.rateLimits.ip),
    node: new RateLimiter(config.rateLimits.node),
    cluster: new RateLimiter(config.rateLimits.cluster),
  };
  const limitBody = bodyLimit({
    maxSize: config.maxBodyBytes,
    onError: () => {
      throw new DomainError('PAYLOAD_TOO_LARGE', `request body exceeds ${config.maxBodyBytes} bytes`);
    },
  });

  app.use('*', requestId());
  app.use('*', observe(metrics, log));
  app.use('*', ipRateLimit(limiters.ip, config.trustProxy, metrics));
  app.use('*', roleGate(role, config.replication));
  app.use('/api/*', masterAnswer(role, store.writer, metrics));
  app.use('/internal/*', requireReplicationSecret(config.replication.secret, config.tls?.ca !== undefined));
  // The bundle upload streams under its own, larger limit (NEBULAGC_MAX_BUNDLE_BYTES). GETs
  // skip the limiter: touching the body makes the node adapter build a full Request per poll.
  app.use('*', (c, next) =>
    BODYLESS.has(c.req.method) || isBundleUpload(c.req.method, c.req.path) ? next() : limitBody(c, next),
  );
  const auth = requireAuth(store, limiters, metrics);
  app.use('/api/v1/*', auth);
  app.use('/cluster/*', auth);
  app.use('/api/v1/*', jsonBody());

  registerHealthRoutes(app, deps);
  registerTenantRoutes(app, deps);
  registerClusterRoutes(app, deps);
  registerNodeRoutes(app, deps);
  registerConfigRoutes(app, deps);
  registerTopologyRoutes(app, deps);
  registerNodeRouteRoutes(app, deps);
  registerHeartbeatRoutes(app, deps);
  registerOperatorRoutes(app, deps);
  registerPkiRoutes(app, deps);
  registerClusterStatusRoutes(app, deps);
  registerClusterOperationRoutes(app, deps);
  registerReplicationRoutes(app, deps);

  app.get('/metrics', async (c) => {
    c.header('Content-Type', metrics.registry.contentType);
    return c.body(await metrics.registry.metrics(), 200);
  });

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', {
    type: 'http',
    scheme: 'bearer',
    description: 'The operator token, or a node token',
  });
  app.openAPIRegistry.registerComponent('securitySchemes', 'nodeToken', {
    type: 'apiKey',
    in: 'header',
    name: 'X-NebulaGC-Node-Token',
  });
  app.openAPIRegistry.registerComponent('securitySchemes', 'clusterToken', {
    type: 'apiKey',
    in: 'header',
    name: 'X-NebulaGC-Cluster-Token',
  });
  app.doc('/openapi.json', {
    openapi: '3.0.3',
    info: { title: 'NebulaGC control plane', version: VERSION },
  });

  app.notFound((c) => errorResponse(c, 'NOT_FOUND', `no route for ${c.req.method} ${c.req.path}`));
  app.onError((err, c) => handleError(err, c, log));
  return app;
}
