import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import YAML from 'yaml';
import { makeTarGz, CA_PEM } from '../helpers/bundle.js';
import { waitUntil } from '../helpers/cluster.js';
import { Underlay } from '../helpers/netns.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

/**
 * A real overlay: three hosts, each a network namespace of its own joined to the others by a
 * bridge, each running the real daemon, which enrolls, fetches its rendered bundle and starts
 * the real nebula with a real tun device inside its namespace (through a `nebula_bin` wrapper
 * that runs `ip netns exec`). The server runs in this process, in the root namespace; the
 * daemons reach it over loopback, and nebula reaches the lighthouse over the bridge.
 */

const DAEMON = path.resolve('dist/daemon/src/cli/main.js');
const HOSTS = ['lh', 'h1', 'h2'] as const;
type Host = (typeof HOSTS)[number];
const OVERLAY: Record<Host, string> = { lh: '10.42.0.1', h1: '10.42.0.2', h2: '10.42.0.3' };

const TEMPLATE = `
tun:
  dev: nebula1
listen:
  host: 0.0.0.0
  port: 4242
punchy:
  punch: true
logging:
  level: info
firewall:
  outbound:
    - { port: any, proto: any, host: any }
  inbound:
    - { port: any, proto: any, host: any }
`;

interface Daemon {
  proc: ChildProcess;
  dir: string;
  statusFile: string;
  configDir: string;
}

interface ClusterStatus {
  applied_version: number | null;
  applied_sha256: string | null;
  nebula_pid: number | null;
  degraded: boolean;
  last_error: string | null;
}

describe('overlay end to end (network namespaces, real nebula, real daemon)', { timeout: 240_000 }, () => {
  let underlay: Underlay;
  let server: TestServer;
  let root: string;
  const tokens = {} as Record<Host, string>;
  const ids = {} as Record<Host, string>;
  const daemons = new Map<Host, Daemon>();

  const status = (h: Host): ClusterStatus | undefined => {
    try {
      return (JSON.parse(readFileSync(daemons.get(h)!.statusFile, 'utf8')) as { clusters: ClusterStatus[] }).clusters[0];
    } catch {
      return undefined;
    }
  };
  const appliedConfig = (h: Host): Record<string, any> =>
    YAML.parse(readFileSync(path.join(daemons.get(h)!.configDir, 'current', 'config.yml'), 'utf8')) as Record<string, any>;
  const nodeVersion = async (h: Host): Promise<number> =>
    (await call(server.url, 'GET', '/api/v1/config/version', { headers: { 'x-nebulagc-node-token': tokens[h] } })).body.version;
  const pingable = (from: Host, to: Host): boolean => underlay.ping(from, OVERLAY[to], 1);

  /** Until every named daemon has applied its node's current version and runs nebula with it. */
  const converged = (hosts: readonly Host[], timeoutMs: number): Promise<boolean> =>
    waitUntil(async () => {
      for (const h of hosts) {
        const s = status(h);
        if (s === undefined || s.nebula_pid === null || s.applied_version !== (await nodeVersion(h))) return false;
      }
      return true;
    }, timeoutMs, 20);

  before(async () => {
    const can = Underlay.available();
    assert.ok(can.ok, `this test needs network namespaces: ${can.ok ? '' : can.reason}`);
    underlay = Underlay.create([...HOSTS]);
    root = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-e2e-'));
    server = await startTestServer({ NEBULAGC_LOG_LEVEL: 'warn' });
    const op = server.op;
    const tenant = await call(server.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'e2e' } });
    const cluster = await call(server.url, 'POST', '/api/v1/clusters', { headers: op, json: { tenant_id: tenant.body.id, name: 'overlay' } });
    assert.equal(cluster.status, 201, JSON.stringify(cluster.body));
    const clusterId = cluster.body.cluster.id as string;
    for (const h of HOSTS) {
      const n = await call(server.url, 'POST', '/api/v1/nodes', {
        headers: op,
        json: { cluster_id: clusterId, name: h, overlay_ip: OVERLAY[h] },
      });
      assert.equal(n.status, 201, JSON.stringify(n.body));
      tokens[h] = n.body.token;
      ids[h] = n.body.node.id;
    }
    const lh = await call(server.url, 'POST', `/api/v1/topology/lighthouses?cluster_id=${clusterId}`, {
      headers: op,
      json: { node_id: ids.lh, public_ip: underlay.address('lh'), port: 4242 },
    });
    assert.equal(lh.status, 200, JSON.stringify(lh.body));
    const bundle = await makeTarGz([{ name: 'config.yml', content: TEMPLATE }, { name: 'ca.crt', content: CA_PEM }]);
    const up = await call(server.url, 'POST', `/api/v1/config/bundle?cluster_id=${clusterId}`, { headers: op, raw: bundle });
    assert.equal(up.status, 201, JSON.stringify(up.body));

    for (const h of HOSTS) daemons.set(h, startDaemon(h));
  });

  function startDaemon(h: Host): Daemon {
    const dir = path.join(root, h);
    const stateDir = path.join(dir, 'state');
    const configDir = path.join(dir, 'nebula');
    const statusFile = path.join(dir, 'status.json');
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'daemon.yml');
    writeFileSync(
      file,
      YAML.stringify({
        log_level: 'debug',
        status_file: statusFile,
        nebula_bin: underlay.wrap(h, 'nebula'),
        poll: { mode: 'blocking', wait_seconds: 30, heartbeat_interval_seconds: 2 },
        restart_backoff: { initial_ms: 200, max_ms: 2000 },
        clusters: [{ name: 'overlay', servers: [server.url], node_token: tokens[h], state_dir: stateDir, config_dir: configDir }],
      }),
    );
    const log = openSync(path.join(dir, 'daemon.log'), 'a');
    const proc = spawn(process.execPath, [DAEMON, 'daemon', '--config', file], { stdio: ['ignore', log, log] });
    return { proc, dir, statusFile, configDir };
  }

  after(async () => {
    await Promise.all(
      [...daemons.values()].map(
        (d) =>
          new Promise<void>((resolve) => {
            if (d.proc.exitCode !== null || d.proc.signalCode !== null) return resolve();
            const force = setTimeout(() => d.proc.kill('SIGKILL'), 10_000);
            d.proc.once('exit', () => {
              clearTimeout(force);
              resolve();
            });
            d.proc.kill('SIGTERM');
          }),
      ),
    );
    underlay?.destroy();
    await server?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  test('every host enrolls, applies its rendered config and runs nebula', async () => {
    assert.ok(await converged(HOSTS, 60_000), `daemons did not converge: ${JSON.stringify(HOSTS.map(status))}`);
    for (const h of HOSTS) {
      assert.ok(readFileSync(path.join(daemons.get(h)!.configDir, 'current', 'host.crt'), 'utf8').includes('NEBULA CERTIFICATE'));
      assert.equal(appliedConfig(h).lighthouse?.am_lighthouse ?? false, h === 'lh');
    }
  });

  test('the hosts reach each other over their overlay IPs, through the lighthouse', async () => {
    // h1 and h2 learn each other's underlay address from the lighthouse; the first pings may be
    // lost while the handshakes complete.
    assert.ok(await waitUntil(() => pingable('h1', 'h2'), 30_000, 200), 'h1 cannot reach h2 over the overlay');
    assert.ok(await waitUntil(() => pingable('h2', 'h1'), 10_000, 200), 'h2 cannot reach h1 over the overlay');
    assert.ok(await waitUntil(() => pingable('h1', 'lh'), 10_000, 200), 'h1 cannot reach the lighthouse over the overlay');
  });

  test('an MTU change reaches the host within 2 s and nebula runs with it', async () => {
    const before = status('h1')!.applied_version;
    const started = performance.now();
    const r = await call(server.url, 'PATCH', `/api/v1/nodes/${ids.h1}`, { headers: server.op, json: { mtu: 1400 } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(await converged(['h1'], 10_000), 'h1 did not apply the change');
    const elapsed = performance.now() - started;
    assert.notEqual(status('h1')!.applied_version, before);
    assert.ok(elapsed < 2000, `the change took ${Math.round(elapsed)} ms to reach the daemon (blocking polls should take well under 2 s)`);
    assert.equal(appliedConfig('h1').tun.mtu, 1400);
    assert.ok(
      await waitUntil(() => /mtu 1400/.test(underlay.exec('h1', ['ip', '-o', 'link', 'show', 'nebula1']).stdout), 10_000, 100),
      'nebula1 in h1 does not run with MTU 1400',
    );
  });

  test('a route advertised by one host appears in the others’ unsafe_routes and kernel routes within 2 s', async () => {
    const started = performance.now();
    const r = await call(server.url, 'PUT', '/api/v1/routes', {
      headers: { 'x-nebulagc-node-token': tokens.h2 },
      json: { routes: ['10.99.0.0/24'] },
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(await converged(['h1', 'lh'], 10_000), 'h1 and lh did not apply the route');
    const elapsed = performance.now() - started;
    assert.ok(elapsed < 2000, `the route took ${Math.round(elapsed)} ms to reach the daemons`);
    for (const h of ['h1', 'lh'] as const) {
      const routes = (appliedConfig(h).tun.unsafe_routes ?? []) as { route: string; via: string }[];
      assert.ok(routes.some((u) => u.route === '10.99.0.0/24' && u.via === OVERLAY.h2), `${h}: ${JSON.stringify(routes)}`);
    }
    assert.ok(
      await waitUntil(() => underlay.exec('h1', ['ip', 'route', 'show', '10.99.0.0/24']).stdout.includes('nebula1'), 10_000, 100),
      'nebula in h1 did not install the route',
    );
  });

  test('a deleted host is blocklisted and cut off; the others still reach each other', async () => {
    const fingerprint = (await call(server.url, 'GET', `/api/v1/nodes/${ids.h2}`, { headers: server.op })).body.cert_fingerprint as string;
    assert.match(fingerprint, /^[0-9a-f]{64}$/);
    const r = await call(server.url, 'DELETE', `/api/v1/nodes/${ids.h2}`, { headers: server.op });
    assert.equal(r.status, 204);
    assert.ok(await converged(['h1', 'lh'], 10_000), 'h1 and lh did not apply the blocklist');
    for (const h of ['h1', 'lh'] as const) {
      assert.ok((appliedConfig(h).pki.blocklist as string[]).includes(fingerprint), `${h} does not blocklist h2`);
    }
    // The others' nebula restarted with the blocklist, so any tunnel to h2 is gone and a new
    // handshake with its certificate is refused.
    assert.ok(await waitUntil(() => pingable('h1', 'lh'), 20_000, 200), 'h1 lost the lighthouse');
    for (let i = 0; i < 3; i++) {
      assert.equal(pingable('h1', 'h2'), false, 'h1 still reaches the revoked h2');
      assert.equal(pingable('h2', 'h1'), false, 'the revoked h2 still reaches h1');
    }
    assert.ok(pingable('lh', 'h1'), 'the lighthouse no longer reaches h1');
  });
});
