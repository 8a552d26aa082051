import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import YAML from 'yaml';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { alive } from '../helpers/lighthouse.js';
import { Underlay } from '../helpers/netns.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';

/**
 * The daemon against real servers that die: a master and a replica as separate processes, the
 * daemon pointed at both, nebula running in a namespace of its own. Killing the master moves
 * the daemon's polls to the replica; killing both leaves nebula running (degraded); a server
 * coming back ends the degraded state.
 */

const DAEMON = path.resolve('dist/daemon/src/cli/main.js');
const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

interface ClusterStatus {
  server: string | null;
  degraded: boolean;
  applied_version: number | null;
  last_poll_at: string | null;
  last_poll_result: string | null;
  nebula_pid: number | null;
}

describe('daemon failover between real servers', { timeout: 180_000 }, () => {
  const dir = clusterDir('e2e-failover');
  let underlay: Underlay;
  let master: ServerProcess;
  let replica: ServerProcess;
  let daemon: ChildProcess;
  const statusFile = path.join(dir.root, 'status.json');
  const status = (): ClusterStatus | undefined => {
    try {
      return (JSON.parse(readFileSync(statusFile, 'utf8')) as { clusters: ClusterStatus[] }).clusters[0];
    } catch {
      return undefined;
    }
  };
  /** True once the daemon has finished a poll that started after `since`. */
  const polledSince = (since: number, server: string): boolean => {
    const s = status();
    return s !== undefined && s.server === server && !s.degraded && s.last_poll_at !== null && Date.parse(s.last_poll_at) > since;
  };

  before(async () => {
    const can = Underlay.available();
    assert.ok(can.ok, `this test needs network namespaces: ${can.ok ? '' : can.reason}`);
    underlay = Underlay.create(['h']);
    master = await startNode('master', dir.root, { NEBULAGC_HA_MODE: 'master' });
    replica = await startNode('replica', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url });

    const tenant = await call(master.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'failover' } });
    const cluster = await call(master.url, 'POST', '/api/v1/clusters', { headers: op, json: { tenant_id: tenant.body.id, name: 'c' } });
    assert.equal(cluster.status, 201, JSON.stringify(cluster.body));
    const node = await call(master.url, 'POST', '/api/v1/nodes', {
      headers: op,
      json: { cluster_id: cluster.body.cluster.id, name: 'h', overlay_ip: '10.42.0.2' },
    });
    assert.equal(node.status, 201, JSON.stringify(node.body));
    assert.ok(
      await waitUntil(async () => (await call(replica.url, 'GET', `/api/v1/nodes/${node.body.node.id}`, { headers: op })).status === 200),
      'the replica never received the node',
    );

    const file = path.join(dir.root, 'daemon.yml');
    writeFileSync(
      file,
      YAML.stringify({
        log_level: 'debug',
        status_file: statusFile,
        nebula_bin: underlay.wrap('h', 'nebula'),
        poll: { mode: 'blocking', wait_seconds: 1, heartbeat_interval_seconds: 1, request_timeout_seconds: 3 },
        server_backoff: { initial_ms: 200, max_ms: 1000 },
        clusters: [
          {
            name: 'c',
            servers: [master.url, replica.url],
            node_token: node.body.token,
            state_dir: path.join(dir.root, 'state'),
            config_dir: path.join(dir.root, 'nebula'),
          },
        ],
      }),
    );
    const log = openSync(path.join(dir.root, 'daemon.log'), 'a');
    daemon = spawn(process.execPath, [DAEMON, 'daemon', '--config', file], { stdio: ['ignore', log, log] });
  });

  after(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) {
      const exited = new Promise((r) => daemon.once('exit', r));
      daemon.kill('SIGTERM');
      const force = setTimeout(() => daemon.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(force);
    }
    underlay?.destroy();
    await replica?.stop();
    await master?.stop();
    dir.remove();
  });

  test('the daemon enrolls through the master and runs nebula', async () => {
    assert.ok(
      await waitUntil(() => {
        const s = status();
        return s !== undefined && s.applied_version !== null && s.nebula_pid !== null && s.server === master.url;
      }, 60_000),
      `daemon did not start: ${JSON.stringify(status())}`,
    );
  });

  test('with the master killed, polling continues on the replica and nebula keeps running', async () => {
    const pid = status()!.nebula_pid!;
    await master.kill9();
    const killedAt = Date.now();
    assert.ok(await waitUntil(() => polledSince(killedAt, replica.url), 30_000), `no poll on the replica: ${JSON.stringify(status())}`);
    assert.equal(status()!.nebula_pid, pid, 'nebula was restarted by a server failover');
    assert.ok(alive(pid));
  });

  test('with every server down, nebula keeps running in degraded mode, and recovers when a server returns', async () => {
    const pid = status()!.nebula_pid!;
    await replica.kill9();
    assert.ok(await waitUntil(() => status()?.degraded === true, 30_000), `not degraded: ${JSON.stringify(status())}`);
    assert.ok(alive(pid), 'nebula stopped when the servers went away');
    assert.equal(status()!.nebula_pid, pid);
    assert.ok(underlay.exec('h', ['ip', '-o', 'link', 'show']).stdout.includes('nebula'), 'the tun device is gone');

    // A replica serves reads from its own copy even while its master is away.
    replica = await replica.restart();
    const back = Date.now();
    assert.ok(await waitUntil(() => polledSince(back, replica.url), 30_000), `did not recover: ${JSON.stringify(status())}`);
    assert.equal(status()!.nebula_pid, pid);
  });
});
