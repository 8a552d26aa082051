import { Command } from 'commander';
import { createLogger } from '../log.js';
import { startServer } from '../server.js';
import { configFrom, dbOption, devOption } from './common.js';

export function serveCommand(): Command {
  return new Command('serve')
    .description('run the API server (the default embedded setup: one node, SQLite under ./data)')
    .option('--listen <host:port>', 'address to listen on (env NEBULAGC_LISTEN)')
    .option('--log-level <level>', 'trace|debug|info|warn|error (env NEBULAGC_LOG_LEVEL)')
    .addOption(dbOption())
    .addOption(devOption())
    .action(async (flags: { listen?: string; logLevel?: string; db?: string; dev?: boolean }) => {
      const extra: Record<string, string> = {};
      if (flags.listen) extra.NEBULAGC_LISTEN = flags.listen;
      if (flags.logLevel) extra.NEBULAGC_LOG_LEVEL = flags.logLevel;
      const config = configFrom(flags, extra);
      const log = createLogger(config.logLevel);
      const server = await startServer(config, log);
      log.info({ url: server.url, node_id: config.nodeId, ha_mode: config.haMode, db: config.dbPath }, 'listening');
      // The token goes to the terminal, never into the JSON log.
      process.stderr.write(`\nNebulaGC server listening on ${server.url}\n`);
      const boot = server.bootstrap;
      if (boot?.status === 'created' && boot.source === 'generated') {
        process.stderr.write(
          `Operator token (shown once, store it now):\n  ${boot.token}\n` +
            `Try: curl -H "Authorization: Bearer <token>" ${server.url}/api/v1/tenants\n\n`,
        );
      }
      // SIGTERM is the planned stop (systemd, an operator): a master hands over to a caught-up
      // replica first. SIGINT stops at once.
      const stop = (signal: string): void => {
        log.info({ signal }, 'shutting down');
        (signal === 'SIGTERM' ? server.shutdown() : server.close()).then(
          () => process.exit(0),
          (err: unknown) => {
            log.error({ err }, 'shutdown failed');
            process.exit(1);
          },
        );
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
}
