import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { waitUntil } from '../helpers/cluster.js';
import { cmdline, processAlive, startDaemon, waitForStatus, type DaemonProcess } from '../helpers/daemon.js';
import { FakeCluster, FakeServer, nebulaConfig } from '../helpers/fake-control-plane.js';

/** Each test builds its own fake servers and daemon; this tears down whatever it made. */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(servers: FakeServer[], overrides: Record<string, unknown> = {}, cluster: Record<string, unknown> = {}): Promise<DaemonProcess> {
  for (const s of servers) {
    await s.start();
    cleanups.push(() => s.stop());
  }
  cleanups.push(() => servers[0]!.cluster.cleanup());
  const d = startDaemon(
    servers.map((s) => s.url),
    overrides,
    cluster,
  );
  cleanups.push(() => d.cleanup());
  return d;
}

describe('daemon: polling modes, failover and supervision', () => {
  it('falls back to plain polls against a server without blocking polls', async () => {
    const c = new FakeCluster();
    const d = await setup([new FakeServer(c, { blocking: false })]);
    const first = await waitForStatus(d, (s) => s.nebula_pid !== null && s.applied_version === c.version, 'applied');
    assert.equal(first.poll_mode, 'plain');
    const polls = c.seen('GET', '/api/v1/config/version').length;
    assert.ok(await waitUntil(() => c.seen('GET', '/api/v1/config/version').length >= polls + 3), 'keeps polling');
    const sent = c.seen('GET', '/api/v1/config/version');
    assert.ok(sent.every((r) => !r.path.includes('index=')), `no blocking query once the server showed it has none: ${sent.map((r) => r.path)}`);
    await c.setConfig(nebulaConfig(50));
    await waitForStatus(d, (s) => s.applied_version === c.version && s.nebula_pid !== first.nebula_pid, 'change picked up by a plain poll');
  });

  it('fails over to the second server when the first dies, and keeps polling there', async () => {
    const c = new FakeCluster();
    const a = new FakeServer(c);
    const b = new FakeServer(c);
    const d = await setup([a, b]);
    const first = await waitForStatus(d, (s) => s.nebula_pid !== null && s.server === a.url, 'running via a');
    await a.stop();
    await waitForStatus(d, (s) => s.server === b.url && !s.degraded, 'polling b');
    await c.setConfig(nebulaConfig(60));
    const s = await waitForStatus(d, (st) => st.applied_version === c.version, 'change applied through b');
    assert.notEqual(s.nebula_pid, first.nebula_pid);
    assert.ok(c.requests.filter((r) => r.server === b.url && r.path.startsWith('/api/v1/config/version')).length > 0);
  });

  it('keeps nebula running in degraded mode with every server down, and recovers when one returns', async () => {
    const c = new FakeCluster();
    const a = new FakeServer(c);
    const b = new FakeServer(c);
    const d = await setup([a, b]);
    const up = await waitForStatus(d, (s) => s.nebula_pid !== null && s.applied_sha256 !== null, 'running');
    await a.stop();
    await b.stop();
    const down = await waitForStatus(d, (s) => s.degraded, 'degraded');
    assert.equal(down.server, null);
    assert.equal(down.last_poll_result, 'unreachable');
    assert.equal(down.nebula_pid, up.nebula_pid);
    assert.ok(processAlive(up.nebula_pid!), 'nebula keeps running');
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(d.status()!.nebula_pid, up.nebula_pid, 'still the same nebula');
    await c.setConfig(nebulaConfig(70));
    await b.start();
    const back = await waitForStatus(d, (s) => !s.degraded && s.applied_version === c.version, 'recovered through b');
    assert.equal(back.server, b.url);
  });

  it('starts nebula on the last applied config when restarted with every server down', async () => {
    const c = new FakeCluster();
    const a = new FakeServer(c);
    const d = await setup([a]);
    const up = await waitForStatus(d, (s) => s.nebula_pid !== null && s.applied_sha256 !== null, 'running');
    await a.stop();
    assert.equal(await d.stop(), 0);
    assert.ok(!processAlive(up.nebula_pid!));
    const again = startDaemon([a.url], {}, { state_dir: d.stateDir, config_dir: d.configDir });
    cleanups.push(() => again.cleanup());
    const s = await waitForStatus(again, (st) => st.degraded && st.nebula_pid !== null, 'degraded with nebula running');
    assert.equal(s.applied_sha256, up.applied_sha256);
    assert.equal(c.seen('POST', '/api/v1/enroll').length, 1, 'no second enrollment');
  });

  it('a new daemon stops the nebula that a SIGKILLed daemon left behind', async () => {
    const c = new FakeCluster();
    const d = await setup([new FakeServer(c)]);
    const up = await waitForStatus(d, (s) => s.nebula_pid !== null && s.applied_sha256 !== null, 'running');
    d.child.kill('SIGKILL');
    await d.stop();
    assert.ok(processAlive(up.nebula_pid!), 'SIGKILL leaves nebula running (systemd would kill the cgroup)');
    const again = startDaemon([c.requests[0]!.server], {}, { state_dir: d.stateDir, config_dir: d.configDir });
    cleanups.push(() => again.cleanup());
    const s = await waitForStatus(again, (st) => st.nebula_pid !== null && st.nebula_pid !== up.nebula_pid, 'new nebula');
    assert.ok(!processAlive(up.nebula_pid!), 'the leftover nebula was stopped');
    assert.match(again.output(), /stopping a nebula left behind by an earlier daemon/);
    assert.ok(processAlive(s.nebula_pid!));
  });

  it('follows 307 to the master for enroll, heartbeat and routes, keeping the token and body', async () => {
    const c = new FakeCluster();
    const master = new FakeServer(c);
    await master.start();
    cleanups.push(() => master.stop());
    const replica = new FakeServer(c, { redirectWritesTo: master.url });
    const d = await setup([replica], {}, { routes: ['10.9.0.0/16'] });
    await waitForStatus(d, (s) => s.nebula_pid !== null, 'running');
    assert.ok(await waitUntil(() => c.seen('PUT', '/api/v1/routes').some((r) => r.server === master.url)));
    for (const [method, p] of [['POST', '/api/v1/enroll'], ['POST', '/api/v1/heartbeat'], ['PUT', '/api/v1/routes']] as const) {
      const seen = c.seen(method, p);
      assert.ok(seen.some((r) => r.server === replica.url), `${method} ${p} went to the replica first`);
      const onMaster = seen.filter((r) => r.server === master.url);
      assert.ok(onMaster.length > 0, `${method} ${p} reached the master`);
      for (const r of onMaster) assert.equal(r.headers['x-nebulagc-node-token'], replica.cluster.requests[0]!.headers['x-nebulagc-node-token']);
    }
    assert.match(c.seen('POST', '/api/v1/enroll').find((r) => r.server === master.url)!.body, /"public_key":"-----BEGIN NEBULA X25519 PUBLIC KEY/);
    assert.deepEqual(c.routes, ['10.9.0.0/16']);
    assert.ok(c.seen('GET', '/api/v1/config/version').every((r) => r.server === replica.url), 'reads stay on the replica');
  });

  it('does not advertise routes that the server already has', async () => {
    const c = new FakeCluster();
    c.routes = ['10.3.0.0/24', '10.4.0.0/24'];
    const d = await setup([new FakeServer(c)], {}, { routes: ['10.4.0.0/24', '10.3.0.0/24'] });
    await waitForStatus(d, (s) => s.nebula_pid !== null, 'running');
    assert.ok(c.seen('GET', '/api/v1/routes').length >= 1);
    assert.equal(c.seen('PUT', '/api/v1/routes').length, 0);
  });

  it('renews the certificate at two thirds of its lifetime, and enrolls again when the server has none', async () => {
    const c = new FakeCluster();
    c.certDuration = '9s';
    const d = await setup([new FakeServer(c)]);
    const first = await waitForStatus(d, (s) => s.nebula_pid !== null && s.cert_expires_at !== null, 'running');
    assert.equal(c.seen('POST', '/api/v1/enroll').length, 1);
    c.certDuration = '2h';
    // Renewal is due 6 s in; nebula-cert's expiry has whole seconds, so allow a little more.
    await waitForStatus(d, (s) => s.cert_expires_at !== first.cert_expires_at, 'renewed', 12_000);
    assert.equal(c.seen('POST', '/api/v1/enroll').length, 2);
    const keys = c.seen('POST', '/api/v1/enroll').map((r) => (JSON.parse(r.body) as { public_key: string }).public_key);
    assert.equal(keys[0], keys[1], 'the same key is renewed');
    await waitForStatus(d, (s) => s.applied_version === c.version, 'renewed certificate applied');
    assert.equal(readFileSync(path.join(d.configDir, 'current', 'host.crt'), 'utf8'), c.certificate, 'nebula runs on the renewed certificate');

    c.certificate = null;
    await c.setConfig(nebulaConfig(80));
    await waitForStatus(d, (s) => c.seen('POST', '/api/v1/enroll').length === 3 && s.applied_version === c.version && c.certificate !== null, 'enrolled again after NOT_ENROLLED');
  });

  it('keeps polling when the server refuses the routes', async () => {
    const c = new FakeCluster();
    c.refuseRoutes = 'routes overlap another node';
    const d = await setup([new FakeServer(c)], {}, { routes: ['10.5.0.0/24'] });
    const s = await waitForStatus(d, (st) => st.nebula_pid !== null && st.applied_sha256 !== null, 'running');
    assert.match(d.output(), /routes refused by the server/);
    assert.equal(s.degraded, false);
    assert.equal(c.seen('PUT', '/api/v1/routes').length, 1);
  });

  it('restarts a crashed nebula with growing backoff', async () => {
    const c = new FakeCluster();
    const d = await setup([new FakeServer(c)]);
    let s = await waitForStatus(d, (st) => st.nebula_pid !== null, 'running');
    const pids = [s.nebula_pid!];
    const gaps: number[] = [];
    for (let i = 1; i <= 3; i++) {
      const killedAt = Date.now();
      process.kill(pids.at(-1)!, 'SIGKILL');
      s = await waitForStatus(d, (st) => st.nebula_pid !== null && !pids.includes(st.nebula_pid), `restart ${i}`);
      gaps.push(Date.now() - killedAt);
      pids.push(s.nebula_pid!);
      assert.equal(s.nebula_restarts, i);
      assert.equal(s.nebula_last_exit, 'signal SIGKILL');
    }
    // restart_backoff is 500 ms doubling, with jitter on the upper half: at least 250, 500, 1000 ms.
    assert.ok(gaps[2]! >= 1000, `third restart waited ${gaps[2]} ms`);
    assert.ok(gaps[2]! > gaps[0]!, `backoff grows: ${gaps.join(', ')}`);
    assert.ok(processAlive(pids.at(-1)!));
  });

  it('runs nebula through a wrapper command, and stops the whole process group', async () => {
    const c = new FakeCluster();
    // A wrapper that keeps a child of its own, as `ip netns exec` or a shell script might.
    const wrapper = ['/bin/sh', '-c', 'sleep 600 & exec nebula "$@"', 'wrapper'];
    const d = await setup([new FakeServer(c)], { nebula_bin: wrapper });
    const s = await waitForStatus(d, (st) => st.nebula_pid !== null && st.applied_sha256 !== null, 'running');
    assert.equal(cmdline(s.nebula_pid!)[0], 'nebula');
    const sleeper = await findInGroup(s.nebula_pid!, 'sleep');
    assert.ok(sleeper, 'the wrapper started its own child');
    assert.equal(await d.stop(), 0);
    assert.ok(!processAlive(s.nebula_pid!), 'nebula stopped');
    assert.ok(!processAlive(sleeper), "the wrapper's child stopped with the group");
  });
});

/** A process named `comm` in process group `pgid`, from /proc. */
async function findInGroup(pgid: number, comm: string): Promise<number | null> {
  const { readdirSync, readFileSync } = await import('node:fs');
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid && stat.includes(`(${comm})`)) return Number(entry);
    } catch {
      // The process went away while we looked.
    }
  }
  return null;
}
