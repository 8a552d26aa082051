/**
 * ops/systemd for the server: the unit passes systemd-analyze verify and carries its restart,
 * stop and hardening settings; the example env files are KEY=value lines whose every key is in
 * the README's configuration table and read by config.ts, and which load once their secrets are
 * set; the readiness script waits for a real server's /health/ready (plain and TLS) and gives up
 * at its bound when nothing listens or a replica is not ready.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { envSchema, loadConfig } from '../../server/src/config.js';
import { clusterDir, freePort, startNode, type ServerProcess } from '../helpers/cluster.js';
import { unitSection } from '../helpers/unit-file.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const read = (p: string): string => readFileSync(path.join(root, p), 'utf8');
const UNIT = 'ops/systemd/nebulagc-server.service';
const WAIT_READY = path.join(root, 'ops/systemd/nebulagc-server-wait-ready');
const MODES = ['standalone', 'master', 'replica', 'auto'] as const;
const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-server-unit-'));
const nodes = clusterDir('wait-ready');
const started: ServerProcess[] = [];
after(async () => {
  await Promise.all(started.map((n) => n.kill9()));
  nodes.remove();
  rmSync(dir, { recursive: true, force: true });
});

/** Variable names in the README's configuration table. */
function documentedVariables(): Set<string> {
  const readme = read('README.md');
  const table = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 1));
  return new Set([...table.matchAll(/^\| `(NEBULAGC_[A-Z0-9_]+)` \|/gm)].map((m) => m[1]!));
}

interface EnvExample {
  /** Uncommented settings. */
  active: Map<string, string>;
  /** `#NEBULAGC_X=value`: optional settings shown with their default or an example. */
  optional: Map<string, string>;
  lines: string[];
}

function parseEnvExample(file: string): EnvExample {
  const lines = read(file).split('\n');
  const active = new Map<string, string>();
  const optional = new Map<string, string>();
  for (const [i, line] of lines.entries()) {
    if (line === '' || (line.startsWith('#') && !/^#NEBULAGC_/.test(line))) continue;
    const m = /^(#?)(NEBULAGC_[A-Z0-9_]+)=(\S*)$/.exec(line);
    assert.ok(m, `${file}:${i + 1} is not a comment, a blank line or KEY=value: ${line}`);
    const target = m[1] ? optional : active;
    assert.ok(!active.has(m[2]!) && !optional.has(m[2]!), `${file}: ${m[2]} appears twice`);
    target.set(m[2]!, m[3]!);
  }
  return { active, optional, lines };
}

const SECRET = 'a'.repeat(64);
const withSecrets = (env: Map<string, string>): Record<string, string> =>
  Object.fromEntries([...env].map(([k, v]) => [k, v === 'change-me' ? SECRET : v]));

function runWaitReady(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const child = spawn(WAIT_READY, args, { env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const kill = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise((resolve) =>
    child.once('exit', (code) => {
      clearTimeout(kill);
      resolve({ code, stdout, stderr });
    }),
  );
}

describe('ops/systemd for the server', () => {
  it('nebulagc-server.service passes systemd-analyze verify', (t) => {
    if (spawnSync('systemd-analyze', ['--version']).status !== 0) return t.skip('systemd-analyze is not installed');
    const unit = read(UNIT);
    assert.match(unit, /^ExecStart=\/usr\/bin\/nebulagc-server serve$/m);
    assert.match(unit, /^ExecStartPost=\/usr\/lib\/nebulagc\/nebulagc-server-wait-ready$/m);
    // verify insists that the commands exist: a stand-in takes the package's bin's place, and the
    // readiness script is the repository's own.
    const bin = path.join(dir, 'nebulagc-server');
    writeFileSync(bin, '#!/bin/sh\n');
    chmodSync(bin, 0o755);
    const file = path.join(dir, 'nebulagc-server.service');
    writeFileSync(file, unit.replace('/usr/bin/nebulagc-server', bin).replace('/usr/lib/nebulagc/nebulagc-server-wait-ready', WAIT_READY));
    const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr.trim(), '');
  });

  it('the unit is at least as hardened as the daemon’s, by systemd-analyze security', (t) => {
    if (spawnSync('systemd-analyze', ['security', '--help']).stdout?.toString().includes('--offline') !== true) return t.skip('systemd-analyze security --offline is not available');
    const exposure = (name: string, unit: string, binPath: string): number => {
      const file = path.join(dir, name);
      writeFileSync(file, unit.replace(binPath, path.join(dir, 'nebulagc-server')).replace('/usr/lib/nebulagc/nebulagc-server-wait-ready', WAIT_READY));
      const out = spawnSync('systemd-analyze', ['security', '--offline=yes', '--no-pager', file], { encoding: 'utf8' }).stdout;
      const m = /Overall exposure level for \S+: ([\d.]+)/.exec(out);
      assert.ok(m, out);
      return Number(m[1]);
    };
    writeFileSync(path.join(dir, 'nebulagc-server'), '#!/bin/sh\n');
    chmodSync(path.join(dir, 'nebulagc-server'), 0o755);
    const server = exposure('nebulagc-server.service', read(UNIT), '/usr/bin/nebulagc-server');
    const daemon = exposure('nebulagc.service', read('ops/systemd/nebulagc.service'), '/usr/bin/nebulagc');
    t.diagnostic(`exposure: server ${server}, daemon ${daemon}`);
    assert.ok(server <= daemon, `server ${server} > daemon ${daemon}`);
  });

  it('the unit has the env file, readiness, restart policy, stop for the handover and hardening', () => {
    const unit = read(UNIT);
    const service = unitSection(unit, 'Service');
    const one = (key: string): string => {
      const v = service.get(key);
      assert.equal(v?.length, 1, `${key} once in [Service]`);
      return v[0]!;
    };
    assert.equal(one('Type'), 'exec');
    assert.equal(one('EnvironmentFile'), '/etc/nebulagc/server.env', 'required: the server cannot start without its secret');
    assert.equal(one('User'), 'nebulagc-server');
    assert.equal(one('Group'), 'nebulagc-server');
    assert.equal(service.get('DynamicUser'), undefined, 'the state outlives the process: a fixed user owns it');
    assert.equal(one('StateDirectory'), 'nebulagc-server');
    assert.equal(one('Restart'), 'on-failure');
    assert.match(one('RestartSec'), /^\d+$/);
    assert.equal(one('TimeoutStartSec'), 'infinity');
    assert.equal(one('KillMode'), 'mixed');
    // The SIGTERM handover is bounded by the switchover timeout; the rest of the stop takes up to 15 s.
    const switchoverS = loadConfig({}).ha.switchoverTimeoutMs / 1000;
    assert.ok(Number(one('TimeoutStopSec')) >= switchoverS + 20, `TimeoutStopSec ${one('TimeoutStopSec')} leaves room for the handover`);
    for (const [key, value] of [
      ['NoNewPrivileges', 'yes'],
      ['ProtectSystem', 'strict'],
      ['ProtectHome', 'yes'],
      ['PrivateTmp', 'yes'],
      ['PrivateDevices', 'yes'],
      ['CapabilityBoundingSet', ''],
      ['AmbientCapabilities', ''],
      ['RestrictSUIDSGID', 'yes'],
      ['UMask', '0077'],
    ] as const) {
      assert.equal(one(key), value, key);
    }
    const unitPart = unitSection(unit, 'Unit');
    assert.match(unitPart.get('StartLimitIntervalSec')?.[0] ?? '', /^\d+$/);
    assert.match(unitPart.get('StartLimitBurst')?.[0] ?? '', /^\d+$/);
    assert.ok(statSync(WAIT_READY).mode & 0o111, 'the readiness script is executable');
  });

  for (const mode of MODES) {
    it(`server-${mode}.env.example: KEY=value lines, every key documented and read, every setting commented`, () => {
      const file = `ops/systemd/server-${mode}.env.example`;
      const { active, optional, lines } = parseEnvExample(file);
      const documented = documentedVariables();
      assert.ok(documented.size > 40, 'the README table was found');
      const readByConfig = new Set(Object.keys(envSchema.shape));
      for (const key of [...active.keys(), ...optional.keys()]) {
        assert.ok(documented.has(key), `${file}: ${key} is not in the README's configuration table`);
        assert.ok(readByConfig.has(key), `${file}: ${key} is not read by server/src/config.ts`);
      }
      for (const key of ['NEBULAGC_NODE_ID', 'NEBULAGC_HA_MODE', 'NEBULAGC_HMAC_SECRET', 'NEBULAGC_DB_PATH', 'NEBULAGC_LISTEN', 'NEBULAGC_ADVERTISE_URL']) {
        assert.ok(active.has(key), `${file} sets ${key}`);
      }
      assert.equal(active.get('NEBULAGC_HA_MODE'), mode);
      assert.equal(active.get('NEBULAGC_DB_PATH'), '/var/lib/nebulagc-server/nebulagc.db', 'under the unit’s StateDirectory');
      if (mode !== 'standalone') assert.ok(active.has('NEBULAGC_REPLICATION_SECRET'), `${file} sets NEBULAGC_REPLICATION_SECRET`);
      if (mode === 'replica') assert.ok(active.has('NEBULAGC_MASTER_URL'));
      if (mode === 'auto') {
        for (const key of ['NEBULAGC_COORDINATOR', 'NEBULAGC_ETCD_ENDPOINTS', 'NEBULAGC_CONSUL_ADDR', 'NEBULAGC_LOCK_TTL_S', 'NEBULAGC_CANDIDATE', 'NEBULAGC_FAILOVER_PRIORITY', 'NEBULAGC_SYNC_REPLICAS']) {
          assert.ok(active.has(key) || optional.has(key), `${file} shows ${key}`);
        }
      }
      // Secrets are placeholders, never values.
      for (const key of ['NEBULAGC_HMAC_SECRET', 'NEBULAGC_REPLICATION_SECRET', 'NEBULAGC_ADMIN_TOKEN', 'NEBULAGC_CONSUL_TOKEN']) {
        const v = active.get(key) ?? optional.get(key);
        if (v !== undefined) assert.equal(v, 'change-me', `${file}: ${key} is a placeholder`);
      }
      // Every setting sits in a block of lines that opens with a comment of its own.
      let commented = false;
      for (const line of lines) {
        if (line === '') commented = false;
        else if (line.startsWith('#') && !line.startsWith('#NEBULAGC_')) commented = true;
        else assert.ok(commented, `${file}: no comment explains ${line}`);
      }
    });

    it(`server-${mode}.env.example loads once its secrets are set, and only then; its commented lines show defaults`, () => {
      const { active, optional } = parseEnvExample(`ops/systemd/server-${mode}.env.example`);
      // The placeholders are too short for the server: a copy left unedited does not start.
      assert.throws(() => loadConfig(Object.fromEntries(active)), /NEBULAGC_HMAC_SECRET|NEBULAGC_REPLICATION_SECRET/);
      const env = withSecrets(active);
      const config = loadConfig(env);
      assert.equal(config.haMode, mode);
      assert.equal(config.dbPath, '/var/lib/nebulagc-server/nebulagc.db');
      if (mode === 'auto') assert.equal(config.ha.auto?.etcdEndpoints.length, 3);
      // A commented line either shows the default (uncommenting it changes nothing) or is an
      // example of a setting without one.
      const examples = new Set(['NEBULAGC_ADMIN_TOKEN', 'NEBULAGC_CONSUL_TOKEN', 'NEBULAGC_TLS_CERT', 'NEBULAGC_TLS_KEY', 'NEBULAGC_TLS_CA', 'NEBULAGC_LIGHTHOUSE_PUBLIC_HOST']);
      for (const [key, value] of optional) {
        if (examples.has(key)) continue;
        assert.deepEqual(loadConfig({ ...env, [key]: value }), config, `#${key}=${value} is not the default`);
      }
    });
  }

  it('wait-ready waits for a server that is not up yet, probing a wildcard listen address on loopback', async () => {
    const port = await freePort();
    const waiting = runWaitReady(['--timeout', '60', '--interval', '0.2'], { NEBULAGC_LISTEN: `0.0.0.0:${port}` });
    await new Promise((r) => setTimeout(r, 500));
    const node = await startNode('standalone', nodes.root, {}, port);
    started.push(node);
    const r = await waiting;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`http://127\\.0\\.0\\.1:${port}/health/ready answered 200`));
  });

  it('wait-ready exits non-zero at its bound when nothing listens', async () => {
    const port = await freePort();
    const r = await runWaitReady(['--timeout', '2', '--interval', '0.2'], { NEBULAGC_LISTEN: `127.0.0.1:${port}` });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /not ready after 2 s \(last: no answer\)/);
  });

  it('wait-ready does not take a replica without a copy for ready: /health/ready is 503 until it has one', async () => {
    const nowhere = await freePort();
    const replica = await startNode('lonely-replica', nodes.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: `http://127.0.0.1:${nowhere}` });
    started.push(replica);
    const r = await runWaitReady(['--timeout', '2', '--interval', '0.2'], { NEBULAGC_LISTEN: `127.0.0.1:${replica.port}` });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /last: 503 .*no verified copy/);
  });

  it('wait-ready probes over https when NEBULAGC_TLS_CERT is set', async () => {
    const cert = path.join(dir, 'tls.crt');
    const key = path.join(dir, 'tls.key');
    // A certificate for a public name, as in production: the loopback probe does not verify it.
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=cp1.example.net', '-keyout', key, '-out', cert], { stdio: 'pipe' });
    const node = await startNode('tls', nodes.root, { NEBULAGC_TLS_CERT: cert, NEBULAGC_TLS_KEY: key }, undefined, 'https');
    started.push(node);
    const r = await runWaitReady(['--timeout', '30', '--interval', '0.2'], { NEBULAGC_LISTEN: `0.0.0.0:${node.port}`, NEBULAGC_TLS_CERT: cert });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`https://127\\.0\\.0\\.1:${node.port}/health/ready answered 200`));
  });

  it('wait-ready --help prints its usage; an unknown argument is a usage error', async () => {
    const help = await runWaitReady(['--help'], {});
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Usage: nebulagc-server-wait-ready/);
    const bad = await runWaitReady(['--bogus'], {});
    assert.equal(bad.code, 2);
  });
});
