import { z } from '@hono/zod-openapi';
import { DomainError } from '../../domain/errors.js';
import type { ReplicationMaster } from '../../replication/master/master.js';
import { HEADERS, PATHS } from '../../replication/wire/protocol.js';
import { RECORD_FORMAT } from '../../replication/wire/record.js';
import { replicationStream, snapshotStream } from '../../replication/master/stream-server.js';
import { idSchema, portSchema, publicKeySchema } from '../../domain/validation.js';
import { registerBuiltinLighthouse } from '../../domain/builtin-lighthouses.js';
import { pkiFrom } from '../../domain/cluster-ca.js';
import { writeHeartbeats } from '../../domain/heartbeats.js';
import type { App, AppContext, Deps } from '../context.js';
import { errorResponse } from '../errors.js';

const positionQuery = z.object({
  from: z.coerce.number().int().min(0),
  epoch: z.coerce.number().int().min(0),
  checksum: z.string().regex(/^[0-9a-f]{16}$/),
  replica_id: z.string().min(1).max(128),
  replica_url: z.url().optional(),
  format: z.coerce.number().int().optional(),
  seen_epoch: z.coerce.number().int().min(0).optional(),
  secret_fp: z.string().regex(/^[0-9a-f]{16}$/).optional(),
  candidate: z.enum(['true', 'false']).optional(),
  instance_id: z.uuid().optional(),
});

const snapshotQuery = z.object({
  replica_id: z.string().min(1).max(128),
  seen_epoch: z.coerce.number().int().min(0).optional(),
  secret_fp: z.string().regex(/^[0-9a-f]{16}$/).optional(),
});

const ackBody = z.object({
  replica_id: z.string().min(1).max(128),
  epoch: z.number().int().min(0),
  txid: z.number().int().min(0),
  checksum: z.string().regex(/^[0-9a-f]{16}$/),
  seen_epoch: z.number().int().min(0).optional(),
});

const positionBody = z.object({ epoch: z.number().int().min(0), txid: z.number().int().min(0), checksum: z.string().regex(/^[0-9a-f]{16}$/) });
const failsafeBody = z.object({ node_id: z.string().min(1).max(128), epoch: z.number().int().nonnegative() });
const promoteBody = z.object({ expect: positionBody, timeout_ms: z.number().int().positive().max(60_000).optional() });

const lighthouseRegistration = z.strictObject({
  cluster_id: idSchema,
  server_id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/),
  public_key: publicKeySchema,
  public_host: z.string().min(1).max(253),
  port: portSchema,
});

const heartbeatBatch = z.object({ beats: z.array(z.tuple([idSchema, z.iso.datetime()])).max(100_000) });

function parse<T>(schema: z.ZodType<T>, value: unknown): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new DomainError('VALIDATION_FAILED', r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  return r.data;
}

/**
 * The internal endpoints (the app mounts them behind the replication secret). Those of a
 * master answer 503 NOT_MASTER on any other node, naming the master it knows of, so a replica
 * pointed at the wrong node can say so and follow the right one.
 */
export function registerReplicationRoutes(app: App, deps: Deps): void {
  const { metrics, store, role, node, config } = deps;
  const pki = pkiFrom(deps.config.pki);
  const sent = (n: number): void => metrics.replicationBytesSent.inc(n);

  const notMaster = (c: AppContext): Response =>
    errorResponse(c, 'NOT_MASTER', `this node is not the master (${role.state})`, {
      node_id: config.nodeId,
      instance_id: node.instanceId,
      ha_state: role.state,
      master_url: role.masterUrl === role.selfUrl ? null : (role.masterUrl ?? null),
    });
  const masterOf = (): ReplicationMaster | undefined => (role.machine.is('master.serving', 'master.fenced') ? role.master : undefined);
  /** A peer has heard of a newer epoch than ours: another node was promoted, and this one is stale. */
  const heardOf = (epoch: number | undefined, from: string): void => {
    if (epoch !== undefined && role.timeline.see(epoch)) node.fence(`${from} has seen epoch ${epoch}, newer than this master's`);
  };

  /** The checks every stream and snapshot request passes first: epoch news, the master role, the secret. */
  const admit = (c: AppContext, q: { replica_id: string; seen_epoch?: number; secret_fp?: string }): Response | undefined => {
    heardOf(q.seen_epoch, `replica ${q.replica_id}`);
    if (!masterOf()) {
      node.noteRedirected(q.replica_id);
      return notMaster(c);
    }
    if (q.secret_fp !== node.fingerprint) {
      deps.log.error({ replica_id: q.replica_id }, 'refused a replica with another NEBULAGC_HMAC_SECRET: every token this master issues would fail there');
      return errorResponse(c, 'SECRET_MISMATCH', 'the replica’s NEBULAGC_HMAC_SECRET differs from this master’s (compared by fingerprint): use the same secret on every node');
    }
    return undefined;
  };

  app.get(PATHS.stream, (c) => {
    const q = parse(positionQuery, c.req.query());
    if (q.format !== RECORD_FORMAT) {
      // Not 409: a replica of any version takes that as "take a snapshot", which would not help.
      deps.log.warn({ replica_id: q.replica_id, replica_format: q.format ?? null, format: RECORD_FORMAT }, 'refused a replica of another record format: run the same version on master and replicas');
      return errorResponse(c, 'RECORD_FORMAT_MISMATCH', `this master sends record format ${RECORD_FORMAT}, the replica reads ${q.format ?? 'an older one'}: run the same version on master and replicas`, {
        format: RECORD_FORMAT,
      });
    }
    const refused = admit(c, q);
    if (refused) return refused;
    const master = masterOf()!;
    const verdict = master.locate({ txid: q.from, epoch: q.epoch, checksum: q.checksum });
    if (verdict.kind === 'newer_epoch') {
      heardOf(q.epoch, `replica ${q.replica_id}`);
      return notMaster(c);
    }
    if (verdict.kind !== 'resume') {
      if (verdict.kind === 'diverged') {
        deps.log.warn({ replica_id: q.replica_id, position: { epoch: q.epoch, txid: q.from }, fork_txid: verdict.forkTxid, diverged_transactions: verdict.transactions }, 'a replica has writes this master never had; it will quarantine them and resync');
      }
      return errorResponse(c, 'SNAPSHOT_REQUIRED', verdict.kind === 'diverged' ? 'that position is off this master’s history (writes it never had): keep them, then take a snapshot' : 'that position is older than this master’s log reaches; take a snapshot', {
        master: master.positionNow(),
        verdict,
      });
    }
    const view = master.replicaConnected(q.replica_id, q.replica_url, q.from, q.candidate !== 'false', q.instance_id);
    deps.log.info({ replica_id: q.replica_id, from: q.from }, 'replica connected');
    const body = replicationStream(master, view, q.from, sent);
    return new Response(body, {
      status: 200,
      headers: {
        'content-type': 'application/vnd.nebulagc.replication-stream',
        'cache-control': 'no-store',
        'x-accel-buffering': 'no',
        [HEADERS.advertiseUrl]: role.selfUrl,
        [HEADERS.nodeId]: config.nodeId,
        [HEADERS.epoch]: String(master.position.epoch),
        [HEADERS.history]: JSON.stringify(role.timeline.history),
        [HEADERS.recordFormat]: String(RECORD_FORMAT),
        [HEADERS.sync]: config.ha.sync.replicas > 0 ? '1' : '0',
        'x-request-id': c.get('requestId'),
      },
    });
  });

  app.get(PATHS.snapshot, (c) => {
    const refused = admit(c, parse(snapshotQuery, c.req.query()));
    if (refused) return refused;
    const master = masterOf()!;
    const snap = master.openSnapshot(store.writer);
    deps.log.info({ position: snap.position, pages: snap.pageCount }, 'serving a snapshot');
    const { body, length } = snapshotStream(snap, sent);
    return new Response(body, {
      status: 200,
      headers: {
        'content-type': 'application/vnd.nebulagc.snapshot',
        'content-length': String(length),
        'cache-control': 'no-store',
        'x-request-id': c.get('requestId'),
      },
    });
  });

  // A replica that restored the backup asks where its copy sits in our log (by its checksum),
  // to stream from there instead of taking a snapshot.
  app.get(PATHS.position, (c) => {
    const master = masterOf();
    if (!master) return notMaster(c);
    const checksum = c.req.query('checksum');
    if (!checksum || !/^[0-9a-f]{1,64}$/.test(checksum)) return errorResponse(c, 'VALIDATION_FAILED', 'checksum must be the hex replication checksum of a copy');
    const position = master.findPosition(checksum);
    return position ? c.json({ position }, 200) : errorResponse(c, 'NOT_FOUND', 'no transaction in the replication log left the database with that checksum');
  });

  app.post(PATHS.ack, async (c) => {
    const a = parse(ackBody, await c.req.json());
    heardOf(a.seen_epoch, `replica ${a.replica_id}`);
    const master = masterOf();
    if (!master) return notMaster(c);
    master.ack(a.replica_id, { epoch: a.epoch, txid: a.txid, checksum: a.checksum });
    return c.json({ ok: true, master: master.position }, 200);
  });

  // A switchover's master asks its target to take over once it holds exactly `expect`.
  app.post(PATHS.promote, async (c) => {
    const req = parse(promoteBody, await c.req.json());
    return c.json(await node.promote({ expect: req.expect, timeoutMs: req.timeout_ms }), 200);
  });

  // A master that lost the coordinator (NEBULAGC_FAILSAFE) asks whether this replica still follows it.
  app.post(PATHS.failsafe, async (c) => {
    const req = parse(failsafeBody, await c.req.json());
    if (!node.noteFailsafe(req.node_id)) {
      return errorResponse(c, 'CONFLICT', `this node does not follow ${req.node_id} (${role.state}, master ${role.masterNodeId ?? 'unknown'})`);
    }
    return c.json({ ok: true }, 200);
  });

  // A replica's built-in lighthouse: the master signs its key and writes its row.
  app.post(PATHS.lighthouses, async (c) => {
    if (!role.takesWrites) return notMaster(c);
    const req = parse(lighthouseRegistration, await c.req.json());
    return c.json(await registerBuiltinLighthouse(store, pki, req), 200);
  });

  // Replicas batch the heartbeats daemons send them and forward them here.
  app.post(PATHS.heartbeats, async (c) => {
    if (!role.takesWrites) return notMaster(c);
    const { beats } = parse(heartbeatBatch, await c.req.json());
    const batch = new Map<string, string>();
    for (const [id, at] of beats) if ((batch.get(id) ?? '') < at) batch.set(id, at);
    const updated = batch.size > 0 ? writeHeartbeats(store, batch) : 0;
    return c.json({ ok: true, updated }, 200);
  });
}
