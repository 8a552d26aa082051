import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { waitUntil } from '../helpers/cluster.js';
import { cmdline, DAEMON_MAIN, processAlive, startDaemon, waitForStatus, type DaemonProcess } from '../helpers/daemon.js';
import { FakeCluster, FakeServer, nebulaConfig } from '../helpers/fake-control-plane.js';

/** One daemon against one fake server through the life of a host: enroll, apply, change, refuse, stop. */
describe('daemon: enrollment and applying bundles', () => {
  let cluster: FakeCluster;
  let server: FakeServer;
  let d: DaemonProcess;
  /** The state once the latest version has been handled and nebula is up (not mid-restart). */
  const settled = () => waitForStatus(d, (s) => s.nebula_pid !== null && s.server_version === cluster.version, 'settled');

  before(async () => {
    cluster = new FakeCluster();
    server = await new FakeServer(cluster).start();
    d = startDaemon([server.url], { max_bundle_bytes: 1024 * 1024 }, { routes: ['10.1.0.0/24', '10.2.0.0/24'] });
  });
  after(async () => {
    await d.cleanup();
    await server.stop();
    cluster.cleanup();
  });

  it('enrolls with a 0600 key made locally, never sending the private key', async () => {
    await waitForStatus(d, (s) => s.enrolled, 'enrolled');
    const key = path.join(d.stateDir, 'host.key');
    assert.equal(statSync(key).mode & 0o777, 0o600);
    assert.equal(statSync(d.stateDir).mode & 0o777, 0o700);
    const privateKey = readFileSync(key, 'utf8');
    assert.match(privateKey, /PRIVATE KEY/);
    const enrolls = cluster.seen('POST', '/api/v1/enroll');
    assert.equal(enrolls.length, 1);
    const sent = JSON.parse(enrolls[0]!.body) as { public_key: string };
    assert.equal(sent.public_key, readFileSync(path.join(d.stateDir, 'host.pub'), 'utf8'));
    const everything = cluster.requests.map((r) => r.body).join('\n');
    assert.ok(!everything.includes('PRIVATE KEY'), 'no request carries a private key');
    const keyBody = privateKey.split('\n')[1]!;
    assert.ok(!everything.includes(keyBody), 'no request carries the key material');
  });

  it('applies the bundle and runs nebula on it, with absolute pki paths', async () => {
    const s = await waitForStatus(d, (st) => st.nebula_pid !== null && st.applied_sha256 !== null, 'nebula running');
    assert.equal(s.applied_version, cluster.version);
    assert.equal(d.activeRelease(), `releases/${s.applied_sha256}`);
    const args = cmdline(s.nebula_pid!);
    assert.equal(args[0], 'nebula');
    assert.deepEqual(args.slice(1), ['-config', path.join(d.configDir, 'current', 'config.yml')]);
    const config = readFileSync(path.join(d.configDir, 'current', 'config.yml'), 'utf8');
    const release = path.join(d.configDir, 'releases', s.applied_sha256!);
    assert.match(config, new RegExp(`ca: ${release}/ca.crt`));
    assert.match(config, new RegExp(`cert: ${release}/host.crt`));
    assert.match(config, new RegExp(`key: ${path.join(d.stateDir, 'host.key')}`));
    assert.equal(readFileSync(path.join(release, 'host.crt'), 'utf8'), cluster.certificate);
  });

  it('advertises the configured routes', async () => {
    assert.ok(await waitUntil(() => cluster.routes.length === 2), 'routes PUT');
    assert.deepEqual(cluster.routes, ['10.1.0.0/24', '10.2.0.0/24']);
    assert.equal(cluster.seen('PUT', '/api/v1/routes').length, 1);
  });

  it('sends heartbeats with the node token', async () => {
    assert.ok(await waitUntil(() => cluster.seen('POST', '/api/v1/heartbeat').length >= 2));
  });

  it('a change reaches it through a held blocking poll, and nebula restarts on the new config', async () => {
    const before_ = await waitForStatus(d, (s) => s.poll_mode === 'blocking', 'blocking polls');
    // The daemon is parked in a poll that carries the index it has.
    assert.ok(await waitUntil(() => cluster.seen('GET', '/api/v1/config/version').some((r) => r.path.includes(`index=${cluster.version}&wait=2s`))));
    await cluster.setConfig(nebulaConfig(100));
    const s = await waitForStatus(d, (st) => st.applied_version === cluster.version && st.nebula_pid !== before_.nebula_pid && st.nebula_pid !== null, 'new config applied');
    assert.ok(!processAlive(before_.nebula_pid!), 'the old nebula is gone');
    assert.match(readFileSync(path.join(d.configDir, 'current', 'config.yml'), 'utf8'), /revision: 100/);
    assert.notEqual(s.applied_sha256, before_.applied_sha256);
    const bundleGets = cluster.seen('GET', '/api/v1/config/bundle');
    assert.equal(bundleGets.at(-1)!.headers['if-none-match'], `"${before_.applied_sha256}"`);
  });

  it('a config that fails nebula -test is never applied, and the running nebula stays', async () => {
    const good = await settled();
    await cluster.setConfig(nebulaConfig(101, 'punchy: {punch: true}\nfirewall_bogus: 1\n').replace('proto: any, host: any}]\n  inbound', 'proto: bogus, host: any}]\n  inbound'));
    const s = await waitForStatus(d, (st) => st.rejected_sha256 !== null, 'bad config rejected');
    assert.match(s.last_error ?? '', /nebula -test failed: .*proto was not understood/);
    assert.equal(s.nebula_pid, good.nebula_pid);
    assert.equal(s.applied_sha256, good.applied_sha256);
    assert.equal(d.activeRelease(), `releases/${good.applied_sha256}`);
    assert.ok(processAlive(good.nebula_pid!));
    // It is not fetched again and again: the next bundle GETs wait for a new version.
    const gets = cluster.seen('GET', '/api/v1/config/bundle').length;
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(cluster.seen('GET', '/api/v1/config/bundle').length, gets);
  });

  it('refuses a bundle whose sha256 differs from the announced one', async () => {
    const good = await settled();
    cluster.announceSha = 'a'.repeat(64);
    await cluster.setConfig(nebulaConfig(102));
    const s = await waitForStatus(d, (st) => /sha256 mismatch/.test(st.last_error ?? ''), 'sha mismatch reported');
    assert.equal(s.applied_sha256, good.applied_sha256);
    assert.equal(s.nebula_pid, good.nebula_pid);
    cluster.announceSha = null;
    await waitForStatus(d, (st) => st.applied_version === cluster.version && st.applied_sha256 !== good.applied_sha256, 'retried and applied once the sha matches');
  });

  it('refuses tar traversal, links and oversize bundles, each fetched once', async () => {
    const good = await settled();
    const ca = cluster.caCert;
    const base = [
      { name: 'config.yml', content: nebulaConfig(103) },
      { name: 'ca.crt', content: ca },
      { name: 'host.crt', content: cluster.certificate! },
    ];
    const cases: [string, Parameters<FakeCluster['setRawBundle']>[0], RegExp][] = [
      ['traversal', [...base, { name: '../../escape', content: 'x' }], /escapes the bundle/],
      ['symlink', [...base, { name: 'link', type: 'symlink', linkname: '/etc/passwd' }], /only files and directories/],
      ['oversize', [...base, { name: 'big', content: randomBytes(2 * 1024 * 1024) }], /bundle too large: the reply exceeds 1048576 bytes/],
    ];
    for (const [what, entries, message] of cases) {
      await cluster.setRawBundle(entries);
      const s = await waitForStatus(d, (st) => st.server_version === cluster.version && message.test(st.last_error ?? ''), `${what} rejected`);
      assert.equal(s.applied_sha256, good.applied_sha256, what);
      assert.equal(s.nebula_pid, good.nebula_pid, what);
    }
    assert.ok(!readFileSync(path.join(d.configDir, 'current', 'config.yml'), 'utf8').includes('revision: 103'));
    const gets = cluster.seen('GET', '/api/v1/config/bundle').length;
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(cluster.seen('GET', '/api/v1/config/bundle').length, gets, 'the rejected bundle is not fetched again');
  });

  it('nebulagc status prints the table and the JSON', () => {
    const table = execFileSync(process.execPath, [DAEMON_MAIN, 'status', '--config', d.configFile], { encoding: 'utf8' });
    const s = d.status()!;
    assert.match(table, /^CLUSTER\s+STATE\s+SERVER\s+VERSION/);
    assert.match(table, new RegExp(`test\\s+ok\\s+${server.url.replace(/[.]/g, '\\.')}\\s+\\d+\\s+${s.applied_sha256!.slice(0, 12)}`));
    assert.match(table, new RegExp(`\\b${s.nebula_pid}\\b`));
    const json = JSON.parse(execFileSync(process.execPath, [DAEMON_MAIN, 'status', '--json', '--status-file', d.statusFile], { encoding: 'utf8' }));
    assert.equal(json.clusters[0].name, 'test');
    assert.equal(json.clusters[0].degraded, false);
  });

  it('SIGTERM stops nebula and the daemon, leaving no orphans', async () => {
    const pid = d.status()!.nebula_pid!;
    assert.ok(processAlive(pid));
    assert.equal(await d.stop(), 0);
    assert.ok(!processAlive(pid), 'nebula is gone');
    assert.equal(d.status()!.nebula_pid, null);
  });
});
