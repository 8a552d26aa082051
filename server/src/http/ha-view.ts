import type { z } from '@hono/zod-openapi';
import type { ElectionStatus } from '../ha/elector.js';
import type { HaRole } from '../ha/role.js';
import type { syncSchema } from './schemas.js';

type SyncView = z.infer<typeof syncSchema>;

/** The sync state (a master with NEBULAGC_SYNC_REPLICAS) and the election (auto mode), as /health and /cluster/status show them. */
export function syncAndElection(role: HaRole): { sync?: SyncView; election?: ElectionStatus } {
  return {
    ...(role.sync && role.master
      ? { sync: { replicas: role.sync.settings.replicas, mode: role.sync.settings.mode, degraded: role.sync.degraded, holding_head: role.sync.holders(role.master.position.txid) } }
      : {}),
    ...(role.election ? { election: role.election() } : {}),
  };
}
