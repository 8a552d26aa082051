import type { LitestreamSupervisor } from '../backup/litestream-process.js';
import type { OpenAPIHono } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { Config } from '../config.js';
import type { HaNode } from '../ha/node.js';
import type { HaRole } from '../ha/role.js';
import type { HeartbeatCoalescer } from '../domain/heartbeats.js';
import type { Principal } from '../domain/auth.js';
import type { Store } from '../domain/store.js';
import type { LighthouseSupervisor } from '../lighthouse/supervisor.js';
import type { Logger } from '../log.js';
import type { VersionWaiters } from './blocking/version-waiters.js';
import type { Metrics } from './metrics.js';

export interface AppEnv {
  Variables: {
    requestId: string;
    principal: Principal;
  };
}

export type AppContext = Context<AppEnv>;
export type App = OpenAPIHono<AppEnv>;

/** Everything the routes need, built once at start. */
export interface Deps {
  config: Config;
  store: Store;
  heartbeats: HeartbeatCoalescer;
  metrics: Metrics;
  log: Logger;
  role: HaRole;
  node: HaNode;
  lighthouses: LighthouseSupervisor;
  /** Blocking config polls held until a node's version moves. */
  waiters: VersionWaiters;
  /** Managed Litestream (NEBULAGC_LITESTREAM_URL); undefined when off. */
  backup?: LitestreamSupervisor | undefined;
}
