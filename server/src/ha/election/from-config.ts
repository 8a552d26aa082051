import type { AutoConfig } from '../../config.js';
import { ConsulCoordinator } from './consul.js';
import type { Coordinator } from './coordinator.js';
import { EtcdCoordinator } from './etcd.js';

/** The coordinator NEBULAGC_COORDINATOR names, with its settings. */
export function coordinatorFor(auto: AutoConfig): Coordinator {
  if (auto.coordinator === 'consul') return new ConsulCoordinator({ addr: auto.consulAddr, token: auto.consulToken, prefix: auto.clusterName, lockTtlS: auto.lockTtlS });
  return new EtcdCoordinator({ endpoints: auto.etcdEndpoints, prefix: auto.clusterName, ttlS: auto.lockTtlS });
}
