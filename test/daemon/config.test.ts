import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, clusterEnvFields, clusterEnvName, globalEnvNames, parseConfig } from '../../daemon/src/config.js';
import { DAEMON_MAIN } from '../helpers/daemon.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-daemon-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const minimal = `
clusters:
  - name: prod-eu
    servers: [https://a.example:8080/, https://b.example:8080]
    node_token: tok
    state_dir: /var/lib/nebulagc/prod
    config_dir: /etc/nebula/prod
`;

/** Runs `nebulagc daemon --config <file>` with the given file content. */
function runWith(content: string): { status: number | null; stderr: string; stdout: string } {
  const file = path.join(dir, `daemon-${Math.random().toString(36).slice(2)}.yml`);
  writeFileSync(file, content);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const r = spawnSync(process.execPath, [DAEMON_MAIN, 'daemon', '--config', file], { encoding: 'utf8', env, timeout: 20_000 });
  return { status: r.status, stderr: r.stderr.replace(file, '<file>'), stdout: r.stdout };
}

describe('daemon config', () => {
  it('fills defaults and normalises server URLs and commands', () => {
    const c = parseConfig(minimal, 'daemon.yml', {});
    assert.equal(c.poll.mode, 'blocking');
    assert.equal(c.poll.waitMs, 30_000);
    assert.deepEqual(c.clusters[0]!.servers, ['https://a.example:8080', 'https://b.example:8080']);
    assert.deepEqual(c.clusters[0]!.nebulaBin, ['nebula']);
    assert.equal(c.statusFile, '/var/lib/nebulagc/status.json');
    const wrapped = parseConfig(minimal + '    nebula_bin: [ip, netns, exec, h1, nebula]\n', 'daemon.yml', {});
    assert.deepEqual(wrapped.clusters[0]!.nebulaBin, ['ip', 'netns', 'exec', 'h1', 'nebula']);
  });

  it('env overrides apply globally and per cluster', () => {
    const c = parseConfig(minimal, 'daemon.yml', {
      NEBULAGC_DAEMON_POLL_MODE: 'plain',
      NEBULAGC_DAEMON_NEBULA_BIN: '/usr/local/bin/nebula-wrap --quiet',
      [clusterEnvName('prod-eu', 'NODE_TOKEN')]: 'from-env',
      [clusterEnvName('prod-eu', 'SERVERS')]: 'http://c:1, http://d:2',
    });
    assert.equal(clusterEnvName('prod-eu', 'NODE_TOKEN'), 'NEBULAGC_DAEMON_PROD_EU_NODE_TOKEN');
    assert.equal(c.poll.mode, 'plain');
    assert.deepEqual(c.clusters[0]!.nebulaBin, ['/usr/local/bin/nebula-wrap', '--quiet']);
    assert.equal(c.clusters[0]!.nodeToken, 'from-env');
    assert.deepEqual(c.clusters[0]!.servers, ['http://c:1', 'http://d:2']);
  });

  it('reads the token from node_token_file', () => {
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, 'secret-token\n');
    const c = parseConfig(minimal.replace('node_token: tok', `node_token_file: ${tokenFile}`), 'daemon.yml', {});
    assert.equal(c.clusters[0]!.nodeToken, 'secret-token');
  });

  const bad: [string, string, RegExp][] = [
    ['no clusters', 'clusters: []\n', /^clusters: needs at least one cluster$/],
    ['a relative state_dir', minimal.replace('/var/lib/nebulagc/prod', 'state'), /^clusters\[0\]\.state_dir: must be an absolute path$/],
    ['no token', minimal.replace('    node_token: tok\n', ''), /^clusters\[0\]\.node_token: set exactly one of node_token and node_token_file$/],
    ['a non-http server', minimal.replace('https://a.example:8080/', 'ftp://a'), /^clusters\[0\]\.servers\[0\]: must be an http:\/\/ or https:\/\/ URL$/],
    ['an unknown key', minimal + 'pol: {}\n', /^\(top level\): Unrecognized key: "pol"$/],
    ['a wrong type', 'poll: {wait_seconds: soon}\n' + minimal, /^poll\.wait_seconds: /],
    ['a duplicate cluster', minimal + minimal.split('\n').slice(2).join('\n').replaceAll('/prod', '/other'), /^clusters\[1\]\.name: "prod-eu" is used twice$/],
    ['broken YAML', 'clusters: [\n', /^not valid YAML: /],
  ];
  for (const [what, content, message] of bad) {
    it(`refuses ${what} with one line naming the field`, () => {
      assert.throws(() => parseConfig(content, 'daemon.yml', {}), (err: Error) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message.replace(/^daemon\.yml: /, ''), message);
        return true;
      });
    });
  }

  it('the CLI prints a bad file as one line and exits non-zero', () => {
    const r = runWith(minimal.replace('/var/lib/nebulagc/prod', 'state'));
    assert.equal(r.status, 2);
    assert.equal(r.stderr, 'nebulagc: error: <file>: clusters[0].state_dir: must be an absolute path\n');
    assert.equal(r.stdout, '');
    const missing = spawnSync(process.execPath, [DAEMON_MAIN, 'daemon', '--config', path.join(dir, 'absent.yml')], { encoding: 'utf8' });
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /^nebulagc: error: .*absent\.yml: cannot read the config file: ENOENT\n$/);
  });

  it('nebulagc version and --help', () => {
    const v = spawnSync(process.execPath, [DAEMON_MAIN, 'version'], { encoding: 'utf8' });
    assert.equal(v.status, 0);
    assert.match(v.stdout, /^nebulagc \d+\.\d+\.\d+/);
    const h = spawnSync(process.execPath, [DAEMON_MAIN, '--help'], { encoding: 'utf8' });
    for (const cmd of ['daemon', 'status', 'enroll', 'version']) assert.match(h.stdout, new RegExp(`\\n  ${cmd}\\b`));
  });

  it('docs/DAEMON.md documents every env override and config field', () => {
    const doc = readFileSync(new URL('../../../docs/DAEMON.md', import.meta.url), 'utf8');
    for (const name of globalEnvNames) assert.ok(doc.includes(`\`${name}\``), `${name} documented`);
    for (const field of clusterEnvFields) assert.ok(doc.includes(`\`NEBULAGC_DAEMON_<CLUSTER>_${field}\``), `<CLUSTER>_${field} documented`);
    for (const field of ['servers', 'node_token', 'node_token_file', 'state_dir', 'config_dir', 'routes', 'nebula_bin', 'nebula_cert_bin', 'status_file', 'max_bundle_bytes', 'log_level', 'wait_seconds', 'interval_seconds', 'heartbeat_interval_seconds', 'request_timeout_seconds', 'server_backoff', 'restart_backoff', 'reset_after_ms']) {
      assert.ok(doc.includes(`\`${field}\``), `${field} documented`);
    }
  });
});
