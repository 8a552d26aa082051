#!/usr/bin/env -S node --min-semi-space-size=16
import { Command, CommanderError } from 'commander';
import { VERSION } from '../version.js';
import { haCommands } from './ha.js';
import { maintenanceCommands } from './maintenance.js';
import { quarantineCommands } from './quarantine.js';
import { replicationCommands } from './replication.js';
import { resourceCommands } from './resources.js';
import { restoreCommand } from './restore.js';
import { serveCommand } from './serve.js';

const program = new Command('nebulagc-server')
  .description('NebulaGC control plane server. Settings come from NEBULAGC_* env vars; flags override them.')
  .version(VERSION)
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

program.addCommand(serveCommand());
program.addCommand(restoreCommand());
for (const cmd of [...resourceCommands(), ...maintenanceCommands(), ...replicationCommands(), ...haCommands(), ...quarantineCommands()]) program.addCommand(cmd);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode);
  // One clear line, no stack trace: every error a user can cause has a message of its own.
  process.stderr.write(`nebulagc-server: error: ${(err as Error).message}\n`);
  process.exit(1);
}
