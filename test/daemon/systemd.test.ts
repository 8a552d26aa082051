import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { parseConfig } from '../../daemon/src/config.js';

const root = new URL('../../../', import.meta.url);
const read = (p: string): string => readFileSync(new URL(p, root), 'utf8');
const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-unit-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('ops/systemd for the daemon', () => {
  it('nebulagc.service passes systemd-analyze verify', (t) => {
    if (spawnSync('systemd-analyze', ['--version']).status !== 0) return t.skip('systemd-analyze is not installed');
    // verify insists that ExecStart's binary exists; a stand-in takes the installed path's place.
    const bin = path.join(dir, 'nebulagc');
    writeFileSync(bin, '#!/bin/sh\n');
    chmodSync(bin, 0o755);
    const unit = read('ops/systemd/nebulagc.service');
    assert.match(unit, /^ExecStart=\/usr\/bin\/nebulagc daemon /m);
    const file = path.join(dir, 'nebulagc.service');
    writeFileSync(file, unit.replace('/usr/bin/nebulagc', bin));
    const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr.trim(), '');
  });

  it('the unit has the restart policy, cgroup kill, env file and hardening', () => {
    const unit = read('ops/systemd/nebulagc.service');
    for (const line of [
      'EnvironmentFile=-/etc/nebulagc/daemon.env',
      'Restart=always',
      'KillMode=control-group',
      'NoNewPrivileges=yes',
      'ProtectSystem=strict',
      'ProtectHome=yes',
      'PrivateTmp=yes',
      'AmbientCapabilities=CAP_NET_ADMIN',
      'CapabilityBoundingSet=CAP_NET_ADMIN',
      'DeviceAllow=/dev/net/tun rw',
    ]) {
      assert.ok(unit.split('\n').includes(line), line);
    }
  });

  it('daemon.yml.example is a valid config', () => {
    const c = parseConfig(read('ops/systemd/daemon.yml.example').replace('node_token_file: /etc/nebulagc/prod.token', 'node_token: x'), 'daemon.yml.example', {});
    assert.equal(c.clusters[0]!.name, 'prod');
    assert.deepEqual(c.clusters[0]!.routes, ['10.1.0.0/24']);
  });
});
