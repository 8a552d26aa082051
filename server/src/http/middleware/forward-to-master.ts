import type { Next } from 'hono';
import type { HaRole } from '../../ha/role.js';
import type { AppContext } from '../context.js';

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'host', 'content-length']);
/** Bodies up to this size are read first, so the write can be sent again to a new master; larger ones (bundle uploads) stream once. */
const REPLAYABLE_BODY_BYTES = 1 << 20;
/** Codes with which a master says it did not run the request. */
const NOT_RUN = new Set(['NOT_MASTER', 'NOT_READY']);

type Attempt = { answer: Response } | { notRun: boolean; reason: string };

/**
 * NEBULAGC_REPLICA_WRITES=proxy: sends a write that reached this replica to the master and
 * relays the answer. When the master is gone (connection refused) or says it did not run the
 * write (fenced, changing role), the write waits, within `holdMs`, for the next master (another
 * node, or this one once promoted) and goes there. A client behind a load balancer then sees a
 * failover as a slow answer, not an error. A write whose fate is unknown (the connection broke
 * after it was sent) is never sent twice.
 */
export async function forwardToMaster(role: HaRole, holdMs: number, c: AppContext, next: Next, pathAndQuery: string): Promise<Response | void> {
  const length = Number(c.req.header('content-length'));
  const replayable = Number.isFinite(length) && length <= REPLAYABLE_BODY_BYTES;
  const body = replayable ? await c.req.arrayBuffer() : c.req.raw.body;
  const deadline = Date.now() + holdMs;
  let last = 'no master known';
  for (;;) {
    if (role.takesWrites) return next();
    const master = role.replica ? role.masterUrl : undefined;
    if (master) {
      const attempt = await send(c.req.raw, `${master}${pathAndQuery}`, body);
      if ('answer' in attempt) return attempt.answer;
      last = attempt.reason;
      if (!attempt.notRun || !replayable) return unavailable(c, master, `${attempt.reason}: it may or may not have run on the master; read it back before you retry`);
    }
    if (!(await nextMaster(role, master, deadline))) {
      return unavailable(c, master, `this replica could not forward the write (${last}); it did not run; retry shortly`);
    }
  }
}

async function send(req: Request, url: string, body: BodyInit | null): Promise<Attempt> {
  const headers = new Headers();
  req.headers.forEach((v, k) => {
    if (!HOP_BY_HOP.has(k)) headers.set(k, v);
  });
  let res: Response;
  try {
    res = await fetch(url, { method: req.method, headers, body, redirect: 'manual', duplex: 'half' } as RequestInit);
  } catch (err) {
    const refused = (err as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED';
    return { notRun: refused, reason: refused ? 'the master refused the connection' : `the connection to the master failed (${(err as Error).message})` };
  }
  if (res.status === 503) {
    const text = await res.text();
    const code = safeCode(text);
    if (code !== undefined && NOT_RUN.has(code)) return { notRun: true, reason: `the master answered ${code}` };
    return { answer: relay(res, text) };
  }
  return { answer: relay(res, res.body) };
}

function relay(res: Response, body: BodyInit | null): Response {
  const out = new Headers();
  res.headers.forEach((v, k) => {
    if (!HOP_BY_HOP.has(k)) out.set(k, v);
  });
  out.set('X-NebulaGC-Proxied-By', 'replica');
  return new Response(body, { status: res.status, headers: out });
}

function safeCode(text: string): string | undefined {
  try {
    const code = (JSON.parse(text) as { code?: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  } catch {
    return undefined;
  }
}

/** Waits until the master this node follows is another than `from`, or it takes writes itself; false at the deadline. */
async function nextMaster(role: HaRole, from: string | undefined, deadline: number): Promise<boolean> {
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    if (role.takesWrites || (role.replica && role.masterUrl !== undefined && role.masterUrl !== from)) return true;
  }
  return false;
}

function unavailable(c: AppContext, master: string | undefined, error: string): Response {
  c.header('Retry-After', '1');
  if (master) c.header('X-NebulaGC-Master-URL', master);
  return c.json({ error, code: 'NOT_MASTER', master_url: master ?? null, request_id: c.get('requestId') }, 503);
}
