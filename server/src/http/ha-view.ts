import type { ElectionStatus } from '../ha/elector.js';
import type { HaRole } from '../ha/role.js';

export interface SyncView {
  replicas: number;
  mode: 'strict' | 'degrade';
  degraded: boolean;
  holding_head: number;
}

/** The sync state (a master with NEBULAGC_SYNC_REPLICAS) and the election (auto mode), as /health and /cluster/status show them. */
export function syncAndElection(role: HaRole): { sync?: SyncView; election?: ElectionStatus } {
  return {
    ...(role.sync && role.master
      ? { sync: { replicas: role.sync.settings.replicas, mode: role.sync.settings.mode, degraded: role.sync.degraded, holding_head: role.sync.holders(role.master.position.txid) } }
      : {}),
    ...(role.election ? { election: role.election() } : {}),
  };
}
