import { serve } from '@hono/node-server';
import { readFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import path from 'node:path';
import type { Config } from './config.js';
import { openReplicaStore, openStore } from './db/open-store.js';
import { pkiFrom } from './domain/cluster-ca.js';
import { HeartbeatCoalescer } from './domain/heartbeats.js';
import { NebulaCert } from './domain/nebula-cert.js';
import { bootstrapOperatorToken, type BootstrapResult } from './domain/operator.js';
import type { Store } from './domain/store.js';
import { HaRole } from './ha/role.js';
import { backfillTemplateText } from './domain/render/template-backfill.js';
import { renderUnrenderedNodes } from './domain/render/versions.js';
import { VersionWaiters } from './http/blocking/version-waiters.js';
import { createApp } from './http/app.js';
import { Metrics } from './http/metrics.js';
import { localRegistrar, remoteRegistrar } from './lighthouse/registrar.js';
import { LighthouseSupervisor } from './lighthouse/supervisor.js';
import type { Logger } from './log.js';
import { InternalClient } from './replication/internal-client.js';
import { ReplicationMaster } from './replication/master.js';
import { ReplicationReplica } from './replication/replica.js';
import { resolveHmacSecret } from './secrets.js';

export interface RunningServer {
  url: string;
  port: number;
  store: Store;
  role: HaRole;
  bootstrap: BootstrapResult | undefined;
  heartbeats: HeartbeatCoalescer;
  lighthouses: LighthouseSupervisor;
  close(): Promise<void>;
}

const SHUTDOWN_GRACE_MS = 5000;

/** Where replication keeps its log, epoch and position files: beside the database. */
export const replicationDir = (dbPath: string): string => `${path.resolve(dbPath)}-replication`;

/**
 * Opens the database for this node's role, seeds the operator token (where writes happen),
 * starts replication, and serves the API until `close()`.
 */
export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const { secret, source } = resolveHmacSecret(config);
  if (source === 'dev-file') log.warn('dev mode: using a generated HMAC secret stored next to the database');
  const rep = config.replication;
  const closers: (() => void | Promise<void>)[] = [];
  let store: Store;
  let master: ReplicationMaster | undefined;
  let replica: ReplicationReplica | undefined;
  let bootstrap: BootstrapResult | undefined;
  let useCopy: ((available: boolean) => void) | undefined;
  let client: InternalClient | undefined;

  if (config.haMode === 'replica') {
    const opened = openReplicaStore({ dbPath: config.dbPath, secret });
    store = opened.store;
    useCopy = opened.useCopy;
    closers.push(() => opened.close());
  } else {
    const opened = openStore({ dbPath: config.dbPath, synchronous: config.synchronous, secret });
    store = opened.store;
    closers.push(() => opened.close());
    if (opened.migration.applied.length > 0) log.info({ from: opened.migration.from, to: opened.migration.to }, 'database migrated');
    if (config.haMode === 'master') {
      master = new ReplicationMaster(
        store.writer,
        { dbPath: config.dbPath, dir: replicationDir(config.dbPath), log: rep.log, walCheckpointBytes: rep.walCheckpointBytes, synchronous: config.synchronous },
        log,
      );
    }
    const backfilled = await backfillTemplateText(store, log);
    if (backfilled > 0) log.info({ bundles: backfilled }, 'stored the config.yml text of bundles uploaded before it was kept');
    const rendered = renderUnrenderedNodes(store);
    if (rendered > 0) log.info({ nodes: rendered }, 'rendered per-node config versions for existing nodes');
    bootstrap = bootstrapOperatorToken(store, config.adminToken);
    if (bootstrap.status === 'existing' && bootstrap.envTokenIgnored) {
      log.warn('NEBULAGC_ADMIN_TOKEN ignored: the database already has an operator token (it seeds only an empty database)');
    }
  }

  const metrics = new Metrics({ dbPath: config.dbPath, writer: store.writer });
  const waiters = new VersionWaiters(store);
  // Registered after openStore's own hook, so the caches have already forgotten when waiters re-read.
  store.writer.onCommit(() => waiters.changed());
  const role = new HaRole(config.haMode, rep.advertiseUrl, rep.masterUrl, master);

  if (config.haMode === 'replica') {
    client = new InternalClient({ baseUrl: rep.masterUrl!, secret: rep.secret!, tls: config.tls });
    replica = new ReplicationReplica(
      client,
      { dbPath: config.dbPath, dir: replicationDir(config.dbPath), replicaId: config.nodeId, advertiseUrl: rep.advertiseUrl },
      {
        onCopyChanged: (available) => useCopy!(available),
        onApplied: (_pos, txs, bytes, commitTimesMs) => {
          store.changes.bump();
          waiters.changed();
          const now = performance.timeOrigin + performance.now();
          for (const t of commitTimesMs) metrics.replicationApplyLag.observe(Math.max(0, now - t) / 1000);
          metrics.replicationTransactions.inc(txs);
          metrics.replicationBytesReceived.inc(bytes);
          if (txs > 0) metrics.replicationBatchSize.observe(txs);
          else metrics.replicationSnapshots.inc();
        },
        onDurable: (pos, commitTimesMs) => {
          const now = performance.timeOrigin + performance.now();
          for (const t of commitTimesMs) metrics.replicationDurableLag.observe(Math.max(0, now - t) / 1000);
          metrics.replicationPosition.set(pos.txid);
        },
        onHeartbeat: (masterTimeMs: number, receivedAtMs: number) => {
          metrics.haLastHeartbeat.set(Math.floor(receivedAtMs / 1000));
          metrics.replicationClockSkew.set((receivedAtMs - masterTimeMs) / 1000);
        },
        onStreamError: () => metrics.haHeartbeatErrors.inc(),
        onMasterAdvertised: (url) => role.setAdvertisedMaster(url),
      },
      log,
    );
    role.attachReplica(replica);
  }

  const heartbeats: HeartbeatCoalescer = new HeartbeatCoalescer(
    store,
    config.heartbeatFlushMs,
    (err) => log.error({ err }, 'heartbeat flush failed; will retry'),
    client ? forwardHeartbeats(client, log, (): HeartbeatCoalescer => heartbeats) : undefined,
  );
  heartbeats.start();
  metrics.watch({ heartbeats, role, waiters });
  if (master) {
    master.events.onTransactions = (txs) => {
      metrics.replicationTransactions.inc(txs.length);
      metrics.replicationPosition.set(txs[txs.length - 1]!.txid);
    };
    master.start();
    closers.unshift(() => master!.close());
  }

  if (config.haMode !== 'replica') checkNebulaCert(config, log);
  const pki = pkiFrom(config.pki);
  const lighthouses = new LighthouseSupervisor({
    store,
    config: config.lighthouse,
    serverId: config.nodeId,
    tool: pki.tool,
    register: client ? remoteRegistrar(client) : localRegistrar(store, pki),
    log: log.child({ component: 'lighthouses' }),
    onCrash: () => metrics.lighthouseRestarts.inc(),
  });
  metrics.watchLighthouses(() => lighthouses.runningCount);
  const app = createApp({ config, store, heartbeats, metrics, log, role, lighthouses, waiters });
  const server = await listen(config, app.fetch);
  const { port } = server.address() as AddressInfo;
  const host = config.listen.host === '0.0.0.0' || config.listen.host === '::' ? '127.0.0.1' : config.listen.host;
  const url = `${config.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  // Without NEBULAGC_ADVERTISE_URL, an ephemeral port is only known now.
  if (!process.env.NEBULAGC_ADVERTISE_URL && config.listen.port === 0) role.selfUrl = url;
  replica?.start();
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
          await replica?.stop();
          client?.close();
          heartbeats.stop();
          for (const c of closers) await c();
          resolve();
        })();
      });
      server.closeIdleConnections();
      // Replication streams never go idle; end them so close() can finish.
      setTimeout(() => server.closeAllConnections(), 200).unref();
    }));

  return { url, port, store, role, bootstrap, heartbeats, lighthouses, close };
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
    s.once('error', reject);
  });
}

/**
 * A replica's heartbeat sink: the batch goes to the master's internal endpoint. A failed send
 * puts the beats back in the coalescer, unless a newer beat for the node arrived meanwhile.
 */
function forwardHeartbeats(client: InternalClient, log: Logger, coalescer: () => HeartbeatCoalescer): (batch: Map<string, string>) => number {
  return (batch) => {
    client.json('POST', '/internal/v1/heartbeats', { beats: [...batch] }).then(
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
