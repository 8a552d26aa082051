import { z } from '@hono/zod-openapi';
import { DomainError } from '../../domain/errors.js';
import type { HaRole } from '../../ha/role.js';
import type { ReplicationMaster } from '../../replication/master.js';
import { RECORD_FORMAT } from '../../replication/record.js';
import { replicationStream, snapshotStream } from '../../replication/stream-server.js';
import { idSchema, portSchema, publicKeySchema } from '../../domain/validation.js';
import { registerBuiltinLighthouse } from '../../domain/builtin-lighthouses.js';
import { pkiFrom } from '../../domain/cluster-ca.js';
import { writeHeartbeats } from '../../domain/heartbeats.js';
import type { App, Deps } from '../context.js';
import { errorResponse } from '../errors.js';

const positionQuery = z.object({
  from: z.coerce.number().int().min(0),
  epoch: z.coerce.number().int().min(0),
  checksum: z.string().regex(/^[0-9a-f]{16}$/),
  replica_id: z.string().min(1).max(128),
  replica_url: z.url().optional(),
  format: z.coerce.number().int().optional(),
});

const ackBody = z.object({
  replica_id: z.string().min(1).max(128),
  epoch: z.number().int().min(0),
  txid: z.number().int().min(0),
  checksum: z.string().regex(/^[0-9a-f]{16}$/),
});

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

/** The master's internal endpoints (the app mounts them behind the replication secret). */
export function registerReplicationRoutes(app: App, deps: Deps, master: ReplicationMaster, role: HaRole): void {
  const { metrics, store } = deps;
  const pki = pkiFrom(deps.config.pki);
  const sent = (n: number): void => metrics.replicationBytesSent.inc(n);

  app.get('/internal/v1/replication/stream', (c) => {
    const q = parse(positionQuery, c.req.query());
    if (q.format !== RECORD_FORMAT) {
      // Not 409: a replica of any version takes that as "take a snapshot", which would not help.
      deps.log.warn({ replica_id: q.replica_id, replica_format: q.format ?? null, format: RECORD_FORMAT }, 'refused a replica of another record format: run the same version on master and replicas');
      return errorResponse(c, 'RECORD_FORMAT_MISMATCH', `this master sends record format ${RECORD_FORMAT}, the replica reads ${q.format ?? 'an older one'}: run the same version on master and replicas`, {
        format: RECORD_FORMAT,
      });
    }
    if (master.validatePosition({ txid: q.from, epoch: q.epoch, checksum: q.checksum }) === 'snapshot') {
      return errorResponse(c, 'SNAPSHOT_REQUIRED', 'that position is not on this master’s history (or no longer in its log); take a snapshot', {
        master: master.position,
      });
    }
    const view = master.replicaConnected(q.replica_id, q.replica_url, q.from);
    deps.log.info({ replica_id: q.replica_id, from: q.from }, 'replica connected');
    const body = replicationStream(master, view, q.from, sent);
    return new Response(body, {
      status: 200,
      headers: {
        'content-type': 'application/vnd.nebulagc.replication-stream',
        'cache-control': 'no-store',
        'x-accel-buffering': 'no',
        'x-nebulagc-advertise-url': role.selfUrl,
        'x-nebulagc-epoch': String(master.position.epoch),
        'x-nebulagc-record-format': String(RECORD_FORMAT),
        'x-request-id': c.get('requestId'),
      },
    });
  });

  app.get('/internal/v1/replication/snapshot', (c) => {
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

  app.post('/internal/v1/replication/ack', async (c) => {
    const a = parse(ackBody, await c.req.json());
    master.ack(a.replica_id, { epoch: a.epoch, txid: a.txid, checksum: a.checksum });
    return c.json({ ok: true, master: master.position }, 200);
  });

  // A replica's built-in lighthouse: the master signs its key and writes its row.
  app.post('/internal/v1/lighthouses', async (c) => {
    const req = parse(lighthouseRegistration, await c.req.json());
    return c.json(await registerBuiltinLighthouse(store, pki, req), 200);
  });

  // Replicas batch the heartbeats daemons send them and forward them here.
  app.post('/internal/v1/heartbeats', async (c) => {
    const { beats } = parse(heartbeatBatch, await c.req.json());
    const batch = new Map<string, string>();
    for (const [id, at] of beats) if ((batch.get(id) ?? '') < at) batch.set(id, at);
    const updated = batch.size > 0 ? writeHeartbeats(store, batch) : 0;
    return c.json({ ok: true, updated }, 200);
  });
}
