import { secretFingerprint } from '../../server/src/ha/node.js';
import { Timeline } from '../../server/src/ha/timeline.js';
import type { ReplicaHooks, ReplicaOptions } from '../../server/src/replication/replica/replica.js';
import { TEST_SECRET } from './server.js';

/** What a ReplicationReplica built by hand needs besides its paths: the HA identity a server gives it. */
export const replicaIdentity = (dir: string, hmacSecret: string = TEST_SECRET): Pick<ReplicaOptions, 'secretFingerprint' | 'candidate' | 'timeline'> => ({
  secretFingerprint: secretFingerprint(hmacSecret),
  candidate: true,
  timeline: Timeline.load(dir),
});

/** The HA hooks a replica built by hand does not use (role changes, redirects, quarantine). */
export const quietReplicaHooks: Pick<ReplicaHooks, 'onMasterAdvertised' | 'onPhase' | 'onRedirected' | 'onDiverged'> = {
  onMasterAdvertised: () => undefined,
  onPhase: () => undefined,
  onRedirected: () => undefined,
  onDiverged: () => Promise.resolve(() => undefined),
};
