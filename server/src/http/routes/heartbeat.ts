import { createRoute, z } from '@hono/zod-openapi';
import { requireNode } from '../../domain/auth.js';
import type { App, Deps } from '../context.js';
import { errors, ok, security } from '../schemas.js';

export function registerHeartbeatRoutes(app: App, { store, heartbeats, config }: Deps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/heartbeat',
      tags: ['Nodes'],
      security,
      summary: 'Report that the calling node is alive (node token)',
      description: `Accepted into memory and written with all others in one transaction every NEBULAGC_HEARTBEAT_FLUSH_MS (${config.heartbeatFlushMs} ms here). Reads of the node show it at once.`,
      responses: {
        202: ok(z.object({ accepted: z.literal(true), last_seen_at: z.string() }), 'Accepted'),
        ...errors,
      },
    }),
    (c) => {
      const node = requireNode(c.get('principal'));
      const at = store.now();
      heartbeats.record(node.id, at);
      return c.json({ accepted: true as const, last_seen_at: at }, 202);
    },
  );
}
