import type { MiddlewareHandler } from 'hono';
import type { ReplicationConfig } from '../../config.js';
import type { HaRole } from '../../ha/role.js';
import type { AppEnv } from '../context.js';
import { errorResponse } from '../errors.js';

const READS = new Set(['GET', 'HEAD', 'OPTIONS']);
/** Daemons may send heartbeats to any node: a replica batches them to the master itself. */
const LOCAL_WRITES = new Set(['/api/v1/heartbeat']);
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'host', 'content-length']);

/**
 * What a replica does before any route runs: refuse to serve until it has a verified copy,
 * send writes to the master (307, proxy or refusal), and hold reads that ask for a
 * transaction it has not applied yet.
 */
export const replicaGate = (role: HaRole, config: ReplicationConfig): MiddlewareHandler<AppEnv> => async (c, next) => {
  const replica = role.replica!;
  const path = c.req.path;
  const isApi = path.startsWith('/api/') || path.startsWith('/cluster/');
  if (!isApi) return next();
  if (!replica.hasCopy) {
    c.header('Retry-After', '1');
    return errorResponse(c, 'NOT_READY', 'this replica has no verified copy yet');
  }
  const master = role.masterUrl;
  if (!READS.has(c.req.method) && !LOCAL_WRITES.has(path)) {
    const query = new URL(c.req.url).search;
    if (config.replicaWrites === 'proxy' && config.masterUrl) return proxy(c.req.raw, `${config.masterUrl}${path}${query}`);
    if (master) c.header('X-NebulaGC-Master-URL', master);
    if (config.replicaWrites === 'redirect' && master) {
      c.header('Location', `${master}${path}${query}`);
      return c.json({ error: 'this node is a replica; send writes to the master', code: 'NOT_MASTER', master_url: master, request_id: c.get('requestId') }, 307);
    }
    return c.json({ error: 'this node is a replica; send writes to the master', code: 'NOT_MASTER', master_url: master ?? null, request_id: c.get('requestId') }, 503);
  }
  const min = c.req.header('x-nebulagc-min-txid');
  if (min !== undefined) {
    const txid = Number(min);
    if (!Number.isSafeInteger(txid) || txid < 0) return errorResponse(c, 'VALIDATION_FAILED', 'X-NebulaGC-Min-TxID must be a transaction id');
    if (!(await replica.waitFor(txid, config.minTxidWaitMs))) {
      if (config.staleReads === 'redirect' && master) {
        c.header('Location', `${master}${path}${new URL(c.req.url).search}`);
        c.header('X-NebulaGC-Master-URL', master);
        return c.json({ error: 'this replica has not reached that transaction yet', code: 'STALE_REPLICA', master_url: master, request_id: c.get('requestId') }, 307);
      }
      c.header('Retry-After', '1');
      return errorResponse(c, 'STALE_REPLICA', `this replica is at transaction ${replica.position?.txid ?? 0}, not yet ${txid}`);
    }
  }
  c.header('X-NebulaGC-TxID', String(replica.position?.txid ?? 0));
  return next();
};

/** Forwards the request to the master as is and relays its answer. */
async function proxy(req: Request, url: string): Promise<Response> {
  const headers = new Headers();
  req.headers.forEach((v, k) => {
    if (!HOP_BY_HOP.has(k)) headers.set(k, v);
  });
  const res = await fetch(url, {
    method: req.method,
    headers,
    body: req.body,
    redirect: 'manual',
    duplex: 'half',
  } as RequestInit);
  const out = new Headers();
  res.headers.forEach((v, k) => {
    if (!HOP_BY_HOP.has(k)) out.set(k, v);
  });
  out.set('X-NebulaGC-Proxied-By', 'replica');
  return new Response(res.body, { status: res.status, headers: out });
}

/** On the master: every write answers with the transaction it reached, for read-your-writes. */
export const masterTxid = (role: HaRole): MiddlewareHandler<AppEnv> => async (c, next) => {
  await next();
  const pos = role.master?.position;
  if (pos) c.header('X-NebulaGC-TxID', String(pos.txid));
};
