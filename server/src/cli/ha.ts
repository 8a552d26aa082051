import { Command } from 'commander';
import { printJson } from './common.js';
import { callServer, serverOptions, type ServerFlags } from './server-api.js';

const withServer = (cmd: Command): Command => {
  for (const o of serverOptions()) cmd.addOption(o);
  return cmd;
};

/** promote, demote, switchover: runtime role changes on a running server (the /cluster API). */
export function haCommands(): Command[] {
  const promote = withServer(
    new Command('promote')
      .description('make a replica the master on a new epoch (POST /cluster/promote); refused while it lags what it last heard the master had')
      .option('--force', 'promote even if the replica cannot show it is caught up (writes it lacks are then lost to clients, kept in quarantine on the old master)'),
  ).action(async (f: ServerFlags & { force?: boolean }) => printJson(await callServer(f, 'POST', '/cluster/promote', { force: f.force === true })));

  const demote = withServer(
    new Command('demote')
      .description('make a master a replica of another node (POST /cluster/demote); on a replica, follow that node instead')
      .requiredOption('--master-url <url>', 'the API URL of the node to follow'),
  ).action(async (f: ServerFlags & { masterUrl: string }) => printJson(await callServer(f, 'POST', '/cluster/demote', { master_url: f.masterUrl })));

  const switchover = withServer(
    new Command('switchover')
      .description('planned handover (POST /cluster/switchover): fence writes, wait for the target to hold everything, promote it, follow it')
      .option('--to <node-id>', 'the replica to hand over to (default: the most caught-up candidate)'),
  ).action(async (f: ServerFlags & { to?: string }) => printJson(await callServer(f, 'POST', '/cluster/switchover', f.to ? { to: f.to } : {})));

  return [promote, demote, switchover];
}
