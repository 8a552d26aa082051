#!/usr/bin/env node
import { Command, CommanderError, Option } from 'commander';
import { VERSION } from '../../../server/src/version.js';
import { ConfigError, DEFAULT_CONFIG_PATH, loadConfig } from '../config.js';
import { runDaemon } from '../daemon.js';
import { enroll } from '../enrollment.js';
import { createDaemonLogger } from '../log.js';
import { ServerPool } from '../server-pool.js';
import { formatStatus, readStatus } from '../status.js';

const configOption = (): Option =>
  new Option('-c, --config <file>', 'daemon config file').env('NEBULAGC_DAEMON_CONFIG').default(DEFAULT_CONFIG_PATH);

const program = new Command('nebulagc')
  .description('NebulaGC host daemon: enrolls this host, keeps its nebula config current and supervises nebula.')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

program
  .command('daemon')
  .description('run the daemon in the foreground (systemd runs this)')
  .addOption(configOption())
  .action(async (opts: { config: string }) => {
    const config = loadConfig(opts.config);
    await runDaemon(config, createDaemonLogger(config.logLevel));
  });

program
  .command('status')
  .description("show each cluster's server, applied version, last poll, nebula pid and uptime, and degraded flag")
  .addOption(configOption())
  .option('--status-file <file>', 'read this status file instead of the one the config names')
  .option('--json', 'print the status file as JSON')
  .action((opts: { config: string; statusFile?: string; json?: boolean }) => {
    const status = readStatus(opts.statusFile ?? loadConfig(opts.config).statusFile);
    process.stdout.write(opts.json ? JSON.stringify(status, null, 2) + '\n' : formatStatus(status));
  });

program
  .command('enroll')
  .description("generate this host's key if needed and enroll it once, without starting nebula")
  .addOption(configOption())
  .option('--cluster <name>', 'only this cluster')
  .action(async (opts: { config: string; cluster?: string }) => {
    const config = loadConfig(opts.config);
    const clusters = config.clusters.filter((c) => opts.cluster === undefined || c.name === opts.cluster);
    if (clusters.length === 0) throw new Error(`no cluster named "${opts.cluster}" in ${config.path}`);
    const log = createDaemonLogger(config.logLevel);
    for (const cluster of clusters) {
      const pool = new ServerPool(cluster.servers, cluster.nodeToken, { timeoutMs: config.poll.requestTimeoutMs, backoff: config.serverBackoff }, log, new AbortController().signal);
      const e = await enroll(cluster, pool);
      process.stdout.write(`${cluster.name}: enrolled, fingerprint ${e.fingerprint}, expires ${e.expires_at}\n`);
    }
  });

program
  .command('version')
  .description('print the version')
  .action(() => {
    process.stdout.write(`nebulagc ${VERSION}\n`);
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode);
  // One clear line, no stack trace: config errors name the file and the field.
  process.stderr.write(`nebulagc: error: ${(err as Error).message}\n`);
  process.exit(err instanceof ConfigError ? 2 : 1);
}
