/**
 * ops/litestream (external mode): both units pass systemd-analyze verify and tie Litestream to
 * the master; litestream.yml is what managed mode renders and the real litestream reads it; the
 * follower starts the unit on a master and stops it anywhere else (against real servers, with a
 * stand-in systemctl); the env example names only settings the server reads.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { litestreamBin, litestreamConfig } from '../../server/src/backup/litestream-config.js';
import { envSchema, loadConfig, type BackupConfig } from '../../server/src/config.js';
import { clusterDir, freePort, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { unitSection } from '../helpers/unit-file.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const read = (p: string): string => readFileSync(path.join(root, p), 'utf8');
const DIR = 'ops/litestream';
const FOLLOW = path.join(root, DIR, 'nebulagc-litestream-follow');
const LITESTREAM = litestreamBin({ bin: undefined });
const tmp = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-litestream-ops-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The units with the installed paths pointing at this checkout's files, as verify needs them to exist. */
function localUnit(name: string): string {
  const file = path.join(tmp, name);
  writeFileSync(file, read(`${DIR}/${name}`).replaceAll('/usr/bin/litestream', LITESTREAM).replaceAll('/usr/lib/nebulagc/nebulagc-litestream-follow', FOLLOW));
  return file;
}

/** The backup settings litestream.yml stands for: its bucket and prefix, defaults otherwise. */
function managed(extra: Partial<BackupConfig> = {}): string {
  const defaults = loadConfig({ NEBULAGC_LITESTREAM_URL: 's3://my-nebulagc-backups/nebulagc' }).backup!;
  return litestreamConfig('/var/lib/nebulagc-server/nebulagc.db', { ...defaults, ...extra });
}

describe('ops/litestream units', () => {
  it('both units pass systemd-analyze verify', (t) => {
    if (spawnSync('systemd-analyze', ['--version']).status !== 0) return t.skip('systemd-analyze is not installed');
    const r = spawnSync('systemd-analyze', ['verify', localUnit('nebulagc-litestream.service'), localUnit('nebulagc-litestream-follow.service')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr.trim(), '');
  });

  it('the litestream unit is at least as hardened as the server’s, by systemd-analyze security', (t) => {
    if (spawnSync('systemd-analyze', ['security', '--help']).stdout?.toString().includes('--offline') !== true) return t.skip('systemd-analyze security --offline is not available');
    const exposure = (file: string): number => {
      const out = spawnSync('systemd-analyze', ['security', '--offline=yes', '--no-pager', file], { encoding: 'utf8' }).stdout;
      const m = /Overall exposure level for \S+: ([\d.]+)/.exec(out);
      assert.ok(m, out);
      return Number(m[1]);
    };
    const serverFile = path.join(tmp, 'nebulagc-server.service');
    writeFileSync(serverFile, read('ops/systemd/nebulagc-server.service'));
    const server = exposure(serverFile);
    const litestream = exposure(localUnit('nebulagc-litestream.service'));
    t.diagnostic(`exposure: litestream ${litestream}, server ${server}`);
    assert.ok(litestream <= server, `litestream ${litestream} > server ${server}`);
  });

  it('Litestream runs as the database’s owner, only on the master, and stops with the server', () => {
    const unit = read(`${DIR}/nebulagc-litestream.service`);
    const service = unitSection(unit, 'Service');
    const one = (key: string): string => {
      const v = service.get(key);
      assert.equal(v?.length, 1, `${key} once in [Service]`);
      return v[0]!;
    };
    assert.equal(one('ExecStart'), '/usr/bin/litestream replicate -config /etc/nebulagc/litestream.yml');
    assert.equal(one('ExecCondition'), '/usr/lib/nebulagc/nebulagc-litestream-follow --check');
    assert.equal(one('User'), 'nebulagc-server', 'the server unit’s user: Litestream writes the database');
    assert.equal(one('EnvironmentFile'), '/etc/nebulagc/litestream.env');
    assert.equal(one('Restart'), 'always');
    assert.equal(one('ReadWritePaths'), '/var/lib/nebulagc-server', 'the server unit’s StateDirectory');
    const unitPart = unitSection(unit, 'Unit');
    assert.deepEqual(unitPart.get('PartOf'), ['nebulagc-server.service']);
    assert.match(unitPart.get('After')?.[0] ?? '', /\bnebulagc-server\.service\b/);
    // Started by the follower only: enabled, it would start at boot on every node.
    assert.equal(unitSection(unit, 'Install').size, 0);
    const follow = read(`${DIR}/nebulagc-litestream-follow.service`);
    assert.match(unitSection(follow, 'Service').get('ExecStart')?.[0] ?? '', /^\/usr\/lib\/nebulagc\/nebulagc-litestream-follow( |$)/);
    assert.deepEqual(unitSection(follow, 'Install').get('WantedBy'), ['multi-user.target']);
  });
});

describe('ops/litestream/litestream.yml', () => {
  it('is what managed mode renders for its bucket, checkpoints included', () => {
    const shipped = parse(read(`${DIR}/litestream.yml`));
    assert.deepEqual(shipped, parse(managed()));
    const db = shipped.dbs[0];
    assert.equal(db['min-checkpoint-page-count'], db['max-checkpoint-page-count'], 'every checkpoint a RESTART');
    assert.equal(db['checkpoint-interval'], '0s');
  });

  it('with its endpoint lines uncommented, is what managed mode renders with NEBULAGC_LITESTREAM_ENDPOINT', () => {
    const text = read(`${DIR}/litestream.yml`).replace('# endpoint: https://s3.example.net', 'endpoint: https://s3.example.net').replace('# force-path-style: true', 'force-path-style: true');
    assert.deepEqual(parse(text), parse(managed({ endpoint: 'https://s3.example.net' })));
  });

  it('is read by the real litestream', () => {
    const r = spawnSync(LITESTREAM, ['databases', '-config', path.join(root, DIR, 'litestream.yml')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^\/var\/lib\/nebulagc-server\/nebulagc\.db\s+s3$/m);
  });

  it('litestream.env.example sets only credentials and settings the server reads', () => {
    const keys = read(`${DIR}/litestream.env.example`)
      .split('\n')
      .filter((l) => /^#?[A-Z][A-Z0-9_]*=/.test(l))
      .map((l) => l.replace(/^#/, '').split('=')[0]!);
    assert.ok(keys.includes('AWS_ACCESS_KEY_ID') && keys.includes('AWS_SECRET_ACCESS_KEY') && keys.includes('NEBULAGC_LISTEN'));
    const readByConfig = new Set(Object.keys(envSchema.shape));
    for (const key of keys) assert.ok(key.startsWith('AWS_') || readByConfig.has(key), `${key} is neither an AWS credential nor read by config.ts`);
  });
});

describe('nebulagc-litestream-follow', { timeout: 120_000 }, () => {
  const nodes = clusterDir('litestream-follow');
  let master: ServerProcess;
  let replica: ServerProcess;
  const bin = path.join(tmp, 'bin');
  const calls = path.join(tmp, 'systemctl.calls');
  const state = path.join(tmp, 'unit.state');

  before(async () => {
    master = await startNode('master', nodes.root, { NEBULAGC_HA_MODE: 'master' });
    replica = await startNode('replica', nodes.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: `http://127.0.0.1:${await freePort()}` });
    // A systemctl that keeps the unit's state in a file and records what it was asked.
    mkdirSync(bin);
    writeFileSync(
      path.join(bin, 'systemctl'),
      `#!/bin/sh\necho "$*" >> ${calls}\ncase "$1" in\n  is-active) s=$(cat ${state}); echo "$s"; [ "$s" = active ] ;;\n  start) echo active > ${state} ;;\n  stop) echo inactive > ${state} ;;\nesac\n`,
    );
    chmodSync(path.join(bin, 'systemctl'), 0o755);
  });
  after(async () => {
    await replica?.stop();
    await master?.stop();
    nodes.remove();
  });

  const env = (listen: string): NodeJS.ProcessEnv => ({ PATH: `${bin}:${process.env.PATH}`, NEBULAGC_LISTEN: listen });
  const check = (listen: string): ReturnType<typeof spawnSync> => spawnSync(FOLLOW, ['--check'], { env: env(listen), encoding: 'utf8' });

  it('--check is 0 on a master, and 1 on a replica or with no server', async () => {
    assert.ok(await waitUntil(() => check(`0.0.0.0:${master.port}`).status === 0), 'the master answers /health/master with 200');
    const onReplica = check(`127.0.0.1:${replica.port}`);
    assert.equal(onReplica.status, 1);
    assert.match(String(onReplica.stdout), /health\/master is not 200: this node is not the master/);
    assert.equal(check(`127.0.0.1:${await freePort()}`).status, 1);
  });

  /** Runs the follower until `done(its output)` holds (or 15 s pass), then stops it with SIGTERM. */
  async function follow(listen: string, initial: string, done: (stdout: string) => boolean): Promise<{ code: number | null; stdout: string; calls: string[] }> {
    writeFileSync(state, `${initial}\n`);
    writeFileSync(calls, '');
    const child = spawn(FOLLOW, ['--interval', '0.1'], { env: env(listen), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const reached = await waitUntil(() => done(stdout), 15_000);
    child.kill('SIGTERM');
    const code = await exited;
    assert.ok(reached, stdout);
    return { code, stdout, calls: readFileSync(calls, 'utf8').trim().split('\n') };
  }

  const unitState = (): string => readFileSync(state, 'utf8').trim();

  it('starts the unit on the master, once, and says so once', async () => {
    let ticks = 0;
    const r = await follow(`127.0.0.1:${master.port}`, 'inactive', (out) => out.includes('starting') && ++ticks > 10);
    assert.equal(unitState(), 'active');
    assert.equal(r.code, 0, 'SIGTERM ends it cleanly');
    assert.deepEqual(
      r.calls.filter((c) => !c.startsWith('is-active')),
      ['start nebulagc-litestream.service'],
    );
    assert.equal(r.stdout, 'nebulagc-litestream-follow: this node is the master: starting nebulagc-litestream.service\n');
  });

  it('stops the unit on a replica and where no server answers', async () => {
    for (const listen of [`127.0.0.1:${replica.port}`, `127.0.0.1:${await freePort()}`]) {
      const r = await follow(listen, 'active', (out) => out.includes('stopped'));
      assert.equal(unitState(), 'inactive');
      assert.ok(r.calls.includes('stop nebulagc-litestream.service'), r.calls.join('\n'));
      assert.ok(!r.calls.some((c) => c.startsWith('start')), r.calls.join('\n'));
      assert.match(r.stdout, /this node is not the master: stopped nebulagc-litestream\.service/);
    }
  });

  it('--help prints its usage; an unknown argument is a usage error', () => {
    const help = spawnSync(FOLLOW, ['--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /^Usage: nebulagc-litestream-follow/);
    assert.equal(spawnSync(FOLLOW, ['--bogus']).status, 2);
  });
});
