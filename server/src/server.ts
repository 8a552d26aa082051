import { serve } from '@hono/node-server';
import { mkdirSync, readFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import path from 'node:path';
import type { Config } from './config.js';
import { NodeStore } from './db/open-store.js';
import { pkiFrom } from './domain/cluster-ca.js';
import { HeartbeatCoalescer } from './domain/heartbeats.js';
import { NebulaCert } from './domain/nebula-cert.js';
import { bootstrapOperatorToken, type BootstrapResult } from './domain/operator.js';
import type { Store } from './domain/store.js';
import { HaNode } from './ha/node.js';
import { HaRole } from './ha/role.js';
import { HaStateMachine } from './ha/states.js';
import { Timeline } from './ha/timeline.js';
import { answerClientErrors } from './http/client-errors.js';
import { writeHeartbeats } from './domain/heartbeats.js';
import { backfillTemplateText } from './domain/render/template-backfill.js';
import { renderUnrenderedNodes } from './domain/render/versions.js';
import { VersionWaiters } from './http/blocking/version-waiters.js';
import { LitestreamSupervisor } from './backup/litestream-process.js';
import { restoreOnBoot } from './backup/restore-on-boot.js';
import { createApp } from './http/app.js';
import { Metrics } from './http/metrics.js';
import { localRegistrar, remoteRegistrar, type Registrar } from './lighthouse/registrar.js';
import { LighthouseSupervisor } from './lighthouse/supervisor.js';
import type { Logger } from './log.js';
import { InternalClient } from './replication/wire/internal-client.js';
import { PATHS } from './replication/wire/protocol.js';
import { resolveHmacSecret } from './secrets.js';

export interface RunningServer {
  url: string;
  port: number;
  store: Store;
  role: HaRole;
  node: HaNode;
  bootstrap: BootstrapResult | undefined;
  heartbeats: HeartbeatCoalescer;
  lighthouses: LighthouseSupervisor;
  /** A master with a caught-up candidate replica hands over first (SIGTERM), then closes. */
  shutdown(): Promise<void>;
  close(): Promise<void>;
}

const SHUTDOWN_GRACE_MS = 5000;

/** Where replication keeps its log, timeline and position files: beside the database. */
export const replicationDir = (dbPath: string): string => `${path.resolve(dbPath)}-replication`;

/**
 * Opens the database for this node's role, seeds the operator token (where writes happen),
 * starts replication, and serves the API until `close()`. The role can change while it runs
 * (HaNode); the store, the app and the routes stay the same objects throughout.
 */
export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const { secret, source } = resolveHmacSecret(config);
  if (source === 'dev-file') log.warn('dev mode: using a generated HMAC secret stored next to the database');
  const dir = replicationDir(config.dbPath);
  mkdirSync(dir, { recursive: true });
  await restoreOnBoot(config, dir, log);
  const nodes = new NodeStore(secret);
  const store = nodes.store;
  const metrics = new Metrics({ dbPath: config.dbPath, writer: store.writer });
  const waiters = new VersionWaiters(store);
  // Registered after NodeStore's own hook, so the caches have already forgotten when waiters re-read.
  store.writer.onCommit(() => waiters.changed());
  const machine = new HaStateMachine('starting', log);
  machine.onTransition((from, to) => metrics.haTransitions.inc({ from_state: from, to_state: to }));
  const role = new HaRole(machine, Timeline.load(dir), config.nodeId, config.replication.advertiseUrl);
  const backup = config.backup
    ? new LitestreamSupervisor({ backup: config.backup, dbPath: config.dbPath, configFile: path.join(dir, 'litestream.yml'), log })
    : undefined;
  // Litestream uploads for the node that takes writes, and for no other: two uploaders would
  // fork the backup, and one on a replica would write into a copy that replication owns.
  if (backup) machine.onTransition((_from, to) => (to === 'master.serving' || to === 'standalone' ? backup.start() : void backup.stop()));
  const node = new HaNode(
    {
      config,
      log,
      metrics,
      nodes,
      role,
      dir,
      onReplicaApplied: () => {
        store.changes.bump();
        waiters.changed();
      },
      ...(backup ? { masterWorkStopped: () => backup.stop() } : {}),
    },
    secret,
  );

  let bootstrap: BootstrapResult | undefined;
  let migration;
  try {
    migration = await node.start();
  } catch (err) {
    nodes.close();
    throw err;
  }
  if (migration && migration.applied.length > 0) log.info({ from: migration.from, to: migration.to }, 'database migrated');
  // Start-up upkeep writes; a master that starts fenced leaves it to the next master.
  if (migration && role.takesWrites) {
    const backfilled = await backfillTemplateText(store, log);
    if (backfilled > 0) log.info({ bundles: backfilled }, 'stored the config.yml text of bundles uploaded before it was kept');
    const rendered = renderUnrenderedNodes(store);
    if (rendered > 0) log.info({ nodes: rendered }, 'rendered per-node config versions for existing nodes');
    bootstrap = bootstrapOperatorToken(store, config.adminToken);
    if (bootstrap.status === 'existing' && bootstrap.envTokenIgnored) {
      log.warn('NEBULAGC_ADMIN_TOKEN ignored: the database already has an operator token (it seeds only an empty database)');
    }
    checkNebulaCert(config, log);
  }

  const masterClient = new MasterClient(role, config);
  const heartbeats: HeartbeatCoalescer = new HeartbeatCoalescer(
    store,
    config.heartbeatFlushMs,
    (err) => log.error({ err }, 'heartbeat flush failed; will retry'),
    config.haMode === 'standalone' ? undefined : forwardHeartbeats(role, store, masterClient, log, (): HeartbeatCoalescer => heartbeats),
  );
  heartbeats.start();
  metrics.watch({ heartbeats, role, waiters });
  if (backup) metrics.watchBackup(backup);

  const pki = pkiFrom(config.pki);
  const lighthouses = new LighthouseSupervisor({
    store,
    config: config.lighthouse,
    serverId: config.nodeId,
    tool: pki.tool,
    register: config.haMode === 'standalone' ? localRegistrar(store, pki) : haRegistrar(role, store, pki, masterClient),
    log: log.child({ component: 'lighthouses' }),
    onCrash: () => metrics.lighthouseRestarts.inc(),
  });
  metrics.watchLighthouses(() => lighthouses.runningCount);
  const app = createApp({ config, store, heartbeats, metrics, log, role, node, lighthouses, waiters, backup });
  const server = await listen(config, app.fetch);
  answerClientErrors(server);
  const { port } = server.address() as AddressInfo;
  const host = config.listen.host === '0.0.0.0' || config.listen.host === '::' ? '127.0.0.1' : config.listen.host;
  const url = `${config.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  // Without NEBULAGC_ADVERTISE_URL, an ephemeral port is only known now.
  if (!process.env.NEBULAGC_ADVERTISE_URL && config.listen.port === 0) role.selfUrl = url;
  lighthouses.start();

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= new Promise<void>((resolve) => {
      waiters.close();
      const force = setTimeout(() => server.closeAllConnections(), SHUTDOWN_GRACE_MS);
      server.close(() => {
        clearTimeout(force);
        void (async () => {
          await lighthouses.close();
          await backup?.stop();
          heartbeats.stop();
          masterClient.close();
          await node.close();
          nodes.close();
          resolve();
        })();
      });
      server.closeIdleConnections();
      // Replication streams never go idle; end them so close() can finish.
      setTimeout(() => server.closeAllConnections(), 200).unref();
    }));
  const shutdown = async (): Promise<void> => {
    await node.handOverBeforeExit();
    await close();
  };

  return { url, port, store, role, node, bootstrap, heartbeats, lighthouses, shutdown, close };
}

/**
 * Says at start whether cluster creation, CA rotation and enrollment will work. The server runs
 * either way (everything else does not need nebula-cert); those routes then answer 503
 * PKI_UNAVAILABLE.
 */
function checkNebulaCert(config: Config, log: Logger): void {
  new NebulaCert({ bin: config.pki.nebulaCertBin }).version().then(
    (version) => log.info({ nebula_cert: config.pki.nebulaCertBin, version }, 'nebula-cert found'),
    (err: unknown) =>
      log.warn(
        { err: (err as Error).message },
        'nebula-cert cannot run: creating clusters, rotating CAs and enrolling nodes will answer 503 PKI_UNAVAILABLE',
      ),
  );
}

function listen(config: Config, fetch: (req: Request, env: unknown) => Response | Promise<Response>): Promise<Server> {
  const tls = config.tls;
  return new Promise<Server>((resolve, reject) => {
    const s = serve(
      {
        fetch,
        hostname: config.listen.host,
        port: config.listen.port,
        ...(tls
          ? {
              createServer: createHttpsServer,
              serverOptions: {
                cert: readFileSync(tls.cert),
                key: readFileSync(tls.key),
                ...(tls.ca ? { ca: readFileSync(tls.ca), requestCert: true, rejectUnauthorized: false } : {}),
              },
            }
          : {}),
      },
      () => resolve(s as Server),
    ) as Server;
    // A proxy reuses its idle connections to us: we must not close one it may be about to send
    // on, or it answers 502. Headers must be allowed a little longer than the keep-alive.
    s.keepAliveTimeout = config.keepAliveTimeoutMs;
    s.headersTimeout = config.keepAliveTimeoutMs + 1000;
    s.once('error', reject);
  });
}

/**
 * A replica's heartbeat sink: the batch goes to the master's internal endpoint. A failed send
 * puts the beats back in the coalescer, unless a newer beat for the node arrived meanwhile. On
 * a master the beats are written here.
 */
function forwardHeartbeats(role: HaRole, store: Store, master: MasterClient, log: Logger, coalescer: () => HeartbeatCoalescer): (batch: Map<string, string>) => number {
  return (batch) => {
    const client = role.master ? undefined : master.current();
    if (!client) return writeHeartbeats(store, batch);
    client.json('POST', PATHS.heartbeats, { beats: [...batch] }).then(
      (r) => {
        if (r.status !== 200) throw new Error(`master answered ${r.status}`);
      },
    ).catch((err: unknown) => {
      log.warn({ err: (err as Error).message, beats: batch.size }, 'forwarding heartbeats to the master failed; will retry');
      const c = coalescer();
      for (const [id, at] of batch) if (c.pendingFor(id) === undefined) c.record(id, at);
    });
    return batch.size;
  };
}

/** A client for the internal API of whichever node is master now, made again when that changes. */
class MasterClient {
  private client: InternalClient | undefined;

  constructor(
    private readonly role: HaRole,
    private readonly config: Config,
  ) {}

  current(): InternalClient | undefined {
    const url = this.role.masterUrl;
    if (!url || url === this.role.selfUrl) return undefined;
    if (this.client?.baseUrl !== url) {
      this.client?.close();
      this.client = new InternalClient({ baseUrl: url, secret: this.config.replication.secret!, tls: this.config.tls });
    }
    return this.client;
  }

  close(): void {
    this.client?.close();
  }
}

/** Built-in lighthouses register on the master: here when this node is master, else through the internal API. */
function haRegistrar(role: HaRole, store: Store, pki: ReturnType<typeof pkiFrom>, master: MasterClient): Registrar {
  const local = localRegistrar(store, pki);
  return (req) => {
    const client = role.master ? undefined : master.current();
    return client ? remoteRegistrar(client)(req) : local(req);
  };
}
