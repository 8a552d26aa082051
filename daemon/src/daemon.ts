import { ClusterAgent } from './cluster-agent.js';
import type { DaemonConfig } from './config.js';
import type { Logger } from './log.js';
import { writeStatus } from './status.js';

/**
 * Runs one agent per cluster until SIGTERM or SIGINT, then stops every nebula and returns.
 * The status file is rewritten whenever an agent's state changes.
 */
export async function runDaemon(config: DaemonConfig, log: Logger): Promise<void> {
  const stop = new AbortController();
  const agents: ClusterAgent[] = [];
  let statusFailed = false;
  const publish = (): void => {
    try {
      writeStatus(config.statusFile, agents.map((a) => a.status));
      statusFailed = false;
    } catch (err) {
      if (!statusFailed) log.error({ err: (err as Error).message, file: config.statusFile }, 'cannot write the status file');
      statusFailed = true;
    }
  };
  for (const cluster of config.clusters) {
    agents.push(new ClusterAgent(cluster, config, log.child({ cluster: cluster.name }), stop.signal, publish));
  }

  const onSignal = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'stopping');
    stop.abort();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // Reloading the daemon's own config in place is not supported; a restart is cheap and the
  // running nebula config is picked up again from disk at start.
  process.on('SIGHUP', () => log.warn('SIGHUP ignored: restart the daemon to reload its config'));

  log.info({ clusters: config.clusters.map((c) => c.name), config: config.path }, 'nebulagc daemon started');
  publish();
  try {
    await Promise.all(agents.map((a) => a.run()));
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
  publish();
  log.info('stopped');
}
