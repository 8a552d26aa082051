import type { AutoConfig } from '../../config.js';
import type { Coordinator } from './coordinator.js';
import { EtcdCoordinator } from './etcd.js';

/** The coordinator NEBULAGC_COORDINATOR names, with its settings. */
export function coordinatorFor(auto: AutoConfig): Coordinator {
  return new EtcdCoordinator({ endpoints: auto.etcdEndpoints, prefix: auto.clusterName, ttlS: auto.lockTtlS });
}
