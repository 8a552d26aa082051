import { serve } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import type { Config } from './config.js';
import { openStore } from './db/open-store.js';
import { HeartbeatCoalescer } from './domain/heartbeats.js';
import { bootstrapOperatorToken, type BootstrapResult } from './domain/operator.js';
import type { Store } from './domain/store.js';
import { createApp } from './http/app.js';
import { Metrics } from './http/metrics.js';
import type { Logger } from './log.js';
import { resolveHmacSecret } from './secrets.js';

export interface RunningServer {
  url: string;
  port: number;
  store: Store;
  bootstrap: BootstrapResult;
  heartbeats: HeartbeatCoalescer;
  close(): Promise<void>;
}

const SHUTDOWN_GRACE_MS = 5000;

/** Opens the database, seeds the operator token, and serves the API until `close()`. */
export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const { secret, source } = resolveHmacSecret(config);
  if (source === 'dev-file') log.warn('dev mode: using a generated HMAC secret stored next to the database');
  const opened = openStore({ dbPath: config.dbPath, synchronous: config.synchronous, secret });
  const { store } = opened;
  if (opened.migration.applied.length > 0) {
    log.info({ from: opened.migration.from, to: opened.migration.to }, 'database migrated');
  }
  const bootstrap = bootstrapOperatorToken(store, config.adminToken);
  if (bootstrap.status === 'existing' && bootstrap.envTokenIgnored) {
    log.warn('NEBULAGC_ADMIN_TOKEN ignored: the database already has an operator token (it seeds only an empty database)');
  }

  const heartbeats = new HeartbeatCoalescer(store, config.heartbeatFlushMs, (err) =>
    log.error({ err }, 'heartbeat flush failed; will retry'),
  );
  heartbeats.start();
  const metrics = new Metrics({ dbPath: config.dbPath, writer: store.writer, heartbeats });
  metrics.haIsMaster.set(store.writer.writable ? 1 : 0);
  metrics.haReplicas.set(0);
  metrics.haHeartbeatDuration.set(0);
  metrics.haLastHeartbeat.set(0);

  const app = createApp({ config, store, heartbeats, metrics, log });
  const server = await new Promise<Server>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, hostname: config.listen.host, port: config.listen.port }, () =>
      resolve(s as Server),
    ) as Server;
    s.once('error', reject);
  });
  const { port } = server.address() as AddressInfo;
  const host = config.listen.host === '0.0.0.0' || config.listen.host === '::' ? '127.0.0.1' : config.listen.host;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= new Promise<void>((resolve) => {
      const force = setTimeout(() => server.closeAllConnections(), SHUTDOWN_GRACE_MS);
      server.close(() => {
        clearTimeout(force);
        heartbeats.stop();
        opened.close();
        resolve();
      });
      server.closeIdleConnections();
    }));

  return { url, port, store, bootstrap, heartbeats, close };
}
