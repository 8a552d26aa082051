import type { MiddlewareHandler, Next } from 'hono';
import type { ReplicationConfig } from '../../config.js';
import type { Writer } from '../../db/writer.js';
import type { HaRole } from '../../ha/role.js';
import type { Metrics } from '../metrics.js';
import type { AppContext, AppEnv } from '../context.js';
import { errorResponse } from '../errors.js';
import { forwardToMaster } from './forward-to-master.js';

const READS = new Set(['GET', 'HEAD', 'OPTIONS']);
/** Daemons may send heartbeats to any node: a replica batches them to the master itself. */
const LOCAL_WRITES = new Set(['/api/v1/heartbeat']);

/**
 * The write gate in front of every API route, by the node's HA state: a serving master or a
 * standalone node passes everything; a fenced master refuses writes with Retry-After (a
 * switchover or a newer epoch); a node between roles serves nothing for that moment; a replica
 * goes through replicaGate. The /cluster operations act on this node itself, whatever its role.
 */
export const roleGate = (role: HaRole, config: ReplicationConfig): MiddlewareHandler<AppEnv> => async (c, next) => {
  const path = c.req.path;
  const isApi = path.startsWith('/api/') || path.startsWith('/cluster/');
  if (!isApi || role.takesWrites) return next();
  // A switchover or a promotion is over in a few hundred ms. Waiting it out here, instead of
  // refusing, lets the request go on to the new master (proxied or redirected) with no error for
  // the client or the load balancer in front, which would otherwise need a retry it cannot do
  // safely for writes.
  const deadline = Date.now() + config.roleChangeHoldMs;
  while (betweenRoles(role, c.req.method, path) && (await role.machine.nextTransition(deadline - Date.now())));
  if (role.takesWrites) return next();
  if (role.machine.is('starting', 'promoting', 'demoting', 'stopped')) {
    c.header('Retry-After', '1');
    return errorResponse(c, 'NOT_READY', `this node is ${role.state}; try again in a moment`);
  }
  if (role.replica) return replicaGate(role, config, c, next);
  if (!READS.has(c.req.method) && !path.startsWith('/cluster/')) {
    c.header('Retry-After', '1');
    const master = role.masterUrl === role.selfUrl ? undefined : role.masterUrl;
    if (master) c.header('X-NebulaGC-Master-URL', master);
    return c.json({ error: `this master is fenced (${role.state}) and takes no writes; retry shortly`, code: 'NOT_MASTER', master_url: master ?? null, request_id: c.get('requestId') }, 503);
  }
  return next();
};

/** The node is changing role, or fenced: what it answers now says nothing of a moment later. */
function betweenRoles(role: HaRole, method: string, path: string): boolean {
  if (role.machine.is('starting', 'promoting', 'demoting')) return true;
  if (role.replica) return !role.replica.hasCopy;
  return role.machine.is('master.fenced') && !READS.has(method) && !path.startsWith('/cluster/');
}

/**
 * What a replica does before any route runs: refuse to serve until it has a verified copy,
 * send writes to the master (307, proxy or refusal), and hold reads that ask for a
 * transaction it has not applied yet.
 */
async function replicaGate(role: HaRole, config: ReplicationConfig, c: AppContext, next: Next): Promise<Response | void> {
  const replica = role.replica!;
  const path = c.req.path;
  if (!replica.hasCopy) {
    c.header('Retry-After', '1');
    return errorResponse(c, 'NOT_READY', 'this replica has no verified copy yet');
  }
  const master = role.masterUrl;
  if (!READS.has(c.req.method) && !LOCAL_WRITES.has(path) && !path.startsWith('/cluster/')) {
    const query = new URL(c.req.url).search;
    if (config.replicaWrites === 'proxy') return forwardToMaster(role, config.roleChangeHoldMs, c, next, `${path}${query}`);
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
}

/**
 * On the master: every answer carries the transaction it reached, for read-your-writes. With
 * NEBULAGC_SYNC_REPLICAS, a request that committed waits until enough replicas hold that
 * transaction durably; in strict mode, one they did not hold in time answers 503 SYNC_TIMEOUT
 * instead, since the client cannot know whether the write would survive a failover.
 */
export const masterAnswer = (role: HaRole, writer: Writer, metrics: Metrics): MiddlewareHandler<AppEnv> => async (c, next) => {
  const commits = writer.commits;
  await next();
  const master = role.master;
  if (!master) return;
  const pos = master.positionNow();
  c.header('X-NebulaGC-TxID', String(pos.txid));
  const gate = role.sync;
  if (!gate || writer.commits === commits || c.res.status >= 400) return;
  const started = performance.now();
  const outcome = await gate.wait(pos.txid);
  metrics.haSyncWait.observe((performance.now() - started) / 1000);
  if (outcome !== 'timeout') return;
  const needed = gate.settings.replicas;
  c.res = errorResponse(
    c,
    'SYNC_TIMEOUT',
    `the write reached transaction ${pos.txid} on the master, but ${needed} replica(s) did not hold it within ${gate.settings.timeoutMs} ms: it may or may not survive a failover; read it back before you retry`,
    { txid: pos.txid, replicas_needed: needed, replicas_holding: gate.holders(pos.txid) },
  );
  c.header('X-NebulaGC-TxID', String(pos.txid));
};
