import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import YAML from 'yaml';
import { untarGz, validBundle } from '../helpers/bundle.js';
import { waitUntil } from '../helpers/cluster.js';
import { seed, type Seeded } from '../helpers/fixtures.js';
import { freeUdpPort, killMentioning } from '../helpers/lighthouse.js';
import { NebulaHost } from '../helpers/nebula.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

interface Member {
  name: string;
  id: string;
  ip: string;
  headers: Record<string, string>;
  fingerprint?: string;
}

/**
 * Per-node rendered bundles with the real nebula and nebula-cert: every kind of node gets a
 * config that `nebula -test` accepts, and a change moves exactly the versions of the nodes
 * whose output it changes.
 */
describe('per-node rendered config', () => {
  let s: TestServer;
  let k: Seeded;
  let host: NebulaHost;
  const m: Record<'plain' | 'lighthouse' | 'relay' | 'router', Member> = {} as never;

  const newNode = async (name: string, ip: string): Promise<Member> => {
    const r = await call(s.url, 'POST', '/api/v1/nodes', { headers: s.op, json: { cluster_id: k.clusterId, name, overlay_ip: ip } });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return { name, id: r.body.node.id, ip, headers: { 'x-nebulagc-node-token': r.body.token } };
  };
  const enroll = async (n: Member): Promise<void> => {
    const r = await call(s.url, 'POST', '/api/v1/enroll', { headers: n.headers, json: { public_key: host.keygen(n.name).publicKey } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    n.fingerprint = r.body.fingerprint;
  };
  const seen = new Map<string, { version: number; hash: string }>();
  /** The node's version, checking that its config_sha256 moved exactly when the version did. */
  const version = async (n: Member): Promise<number> => {
    const r = await call(s.url, 'GET', '/api/v1/config/version', { headers: n.headers });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.headers.get('x-nebulagc-index'), String(r.body.version));
    assert.match(r.body.config_sha256, /^[0-9a-f]{64}$/);
    assert.equal('sha256' in r.body, false);
    const last = seen.get(n.id);
    if (last) assert.equal(last.hash === r.body.config_sha256, last.version === r.body.version, `${n.name}: config_sha256 and version disagree`);
    seen.set(n.id, { version: r.body.version, hash: r.body.config_sha256 });
    return r.body.version;
  };
  const versions = async (): Promise<Record<string, number>> =>
    Object.fromEntries(await Promise.all(Object.entries(m).map(async ([kind, n]) => [kind, await version(n)])));
  const bundle = async (n: Member) => {
    const r = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: n.headers });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const files = await untarGz(r.body as Buffer);
    return { r, files, config: YAML.parse(files.get('config.yml')!.toString('utf8')) };
  };
  const changed = (a: Record<string, number>, b: Record<string, number>): string[] =>
    Object.keys(a).filter((kind) => a[kind] !== b[kind]).sort();

  before(async () => {
    s = await startTestServer({
      NEBULAGC_CERT_LIFETIME: '24h',
      NEBULAGC_NODE_ID: 'cp-render',
      NEBULAGC_LIGHTHOUSE_LISTEN_HOST: '127.0.0.1',
      NEBULAGC_LIGHTHOUSE_PUBLIC_HOST: '192.0.2.50',
    });
    k = await seed(s);
    host = new NebulaHost();
    m.plain = await newNode('plain', '10.42.1.1');
    m.lighthouse = await newNode('lighthouse', '10.42.1.2');
    m.relay = await newNode('relay', '10.42.1.3');
    m.router = await newNode('router', '10.42.1.4');
    const lh = await call(s.url, 'POST', '/api/v1/topology/lighthouses', {
      headers: s.op,
      json: { node_id: m.lighthouse.id, public_ip: '192.0.2.10', port: 4300 },
    });
    assert.equal(lh.status, 200, JSON.stringify(lh.body));
    const relay = await call(s.url, 'POST', '/api/v1/topology/relays', { headers: s.op, json: { node_id: m.relay.id } });
    assert.equal(relay.status, 200, JSON.stringify(relay.body));
    const routes = await call(s.url, 'PUT', '/api/v1/routes', { headers: m.router.headers, json: { routes: ['192.168.50.0/24'] } });
    assert.equal(routes.status, 200, JSON.stringify(routes.body));
  });
  after(async () => {
    host.cleanup();
    const dir = s.dir;
    await s.stop();
    killMentioning(dir);
  });

  it('a node that has not enrolled gets 409 NOT_ENROLLED, and a version with its content hash', async () => {
    const r = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: m.plain.headers });
    assert.equal(r.status, 409);
    assert.equal(r.body.code, 'NOT_ENROLLED');
    const v = await call(s.url, 'GET', '/api/v1/config/version', { headers: m.plain.headers });
    assert.equal(v.status, 200);
    assert.equal(typeof v.body.version, 'number');
    assert.ok(v.body.version > 0);
    assert.match(v.body.config_sha256, /^[0-9a-f]{64}$/);
    assert.equal(v.body.cluster_id, k.clusterId);
  });

  it('every kind of node gets a bundle that the real nebula -test accepts (built-in default template)', async () => {
    for (const n of Object.values(m)) await enroll(n);
    for (const [kind, n] of Object.entries(m)) {
      const { r, files, config } = await bundle(n);
      assert.deepEqual([...files.keys()], ['config.yml', 'ca.crt', 'host.crt']);
      const sha = createHash('sha256').update(r.body as Buffer).digest('hex');
      assert.equal(r.headers.get('etag'), `"${sha}"`);
      assert.equal(r.headers.get('x-nebulagc-bundle-sha256'), sha);
      assert.equal(r.headers.get('x-nebulagc-bundle-version'), r.headers.get('x-nebulagc-index'));
      assert.equal(r.headers.get('x-nebulagc-index'), String(await version(n)));
      assert.deepEqual(config.pki, { ca: 'ca.crt', cert: 'host.crt', key: 'host.key', blocklist: [] });
      const verdict = host.nebulaTest(files, n.name);
      assert.equal(verdict.status, 0, `${kind}: ${verdict.output}`);
    }
  });

  it('renders the topology for each kind', async () => {
    const plain = (await bundle(m.plain)).config;
    assert.deepEqual(plain.static_host_map, { '10.42.1.2': ['192.0.2.10:4300'] });
    assert.deepEqual(plain.lighthouse.hosts, ['10.42.1.2']);
    assert.equal(plain.lighthouse.am_lighthouse, false);
    assert.deepEqual(plain.relay, { am_relay: false, use_relays: true, relays: ['10.42.1.3'] });
    assert.deepEqual(plain.tun.unsafe_routes, [{ route: '192.168.50.0/24', via: '10.42.1.4', mtu: 1300 }]);
    assert.equal(plain.tun.mtu, 1300);

    const lh = (await bundle(m.lighthouse)).config;
    assert.equal(lh.lighthouse.am_lighthouse, true);
    assert.deepEqual(lh.lighthouse.hosts, [], 'a lighthouse does not list itself');
    assert.equal(lh.listen.port, 4300);

    const relay = (await bundle(m.relay)).config;
    assert.equal(relay.relay.am_relay, true);
    assert.deepEqual(relay.relay.relays, []);

    const router = (await bundle(m.router)).config;
    assert.deepEqual(router.tun.unsafe_routes, [], 'a node does not route its own subnets through itself');
  });

  it('the same inputs give the same bytes; If-None-Match answers 304', async () => {
    const a = await bundle(m.plain);
    const b = await bundle(m.plain);
    assert.deepEqual(a.r.body, b.r.body);
    const r = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: { ...m.plain.headers, 'if-none-match': a.r.headers.get('etag')! } });
    assert.equal(r.status, 304);
    assert.equal(r.headers.get('x-nebulagc-index'), a.r.headers.get('x-nebulagc-index'));
    const v = await call(s.url, 'GET', '/api/v1/config/version', { headers: m.plain.headers });
    assert.match(v.body.config_sha256, /^[0-9a-f]{64}$/);
    assert.notEqual(v.body.config_sha256, a.r.headers.get('x-nebulagc-bundle-sha256'), 'a content hash, not the archive’s');
  });

  it('a route advertised by one node moves the others’ versions but not its own', async () => {
    const before = await versions();
    const r = await call(s.url, 'PUT', '/api/v1/routes', { headers: m.router.headers, json: { routes: ['192.168.50.0/24', '192.168.60.0/24'] } });
    assert.equal(r.status, 200);
    const after = await versions();
    assert.deepEqual(changed(before, after), ['lighthouse', 'plain', 'relay']);
    const plain = (await bundle(m.plain)).config;
    assert.deepEqual(
      plain.tun.unsafe_routes.map((u: { route: string }) => u.route),
      ['192.168.50.0/24', '192.168.60.0/24'],
    );
  });

  it('a node’s own MTU moves only its version', async () => {
    const before = await versions();
    const r = await call(s.url, 'PATCH', `/api/v1/nodes/${m.plain.id}`, { headers: s.op, json: { mtu: 1400 } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const after = await versions();
    assert.deepEqual(changed(before, after), ['plain']);
    const { config, files } = await bundle(m.plain);
    assert.equal(config.tun.mtu, 1400);
    assert.ok(config.tun.unsafe_routes.every((u: { mtu: number }) => u.mtu === 1400));
    assert.equal(host.nebulaTest(files, 'plain').status, 0);
  });

  it('a change that renders the same (a rename) moves no version', async () => {
    const n = await newNode('bystander', '10.42.1.9');
    const before = await versions();
    const r = await call(s.url, 'PATCH', `/api/v1/nodes/${n.id}`, { headers: s.op, json: { name: 'bystander-2' } });
    assert.equal(r.status, 200);
    assert.deepEqual(changed(before, await versions()), []);
  });

  it('a new lighthouse moves every version', async () => {
    const before = await versions();
    const r = await call(s.url, 'POST', '/api/v1/topology/lighthouses', {
      headers: s.op,
      json: { node_id: m.relay.id, public_ip: '192.0.2.11' },
    });
    assert.equal(r.status, 200);
    const after = await versions();
    assert.deepEqual(changed(before, after), ['lighthouse', 'plain', 'relay', 'router']);
    const plain = (await bundle(m.plain)).config;
    assert.deepEqual(plain.static_host_map, { '10.42.1.2': ['192.0.2.10:4300'], '10.42.1.3': ['192.0.2.11:4242'] });
    for (const n of Object.values(m)) {
      const { files } = await bundle(n);
      assert.equal(host.nebulaTest(files, n.name).status, 0, n.name);
    }
  });

  it('deleting a node puts its fingerprint in every other node’s blocklist', async () => {
    const doomed = await newNode('doomed', '10.42.1.20');
    await enroll(doomed);
    const before = await versions();
    const r = await call(s.url, 'DELETE', `/api/v1/nodes/${doomed.id}`, { headers: s.op });
    assert.equal(r.status, 204);
    assert.deepEqual(changed(before, await versions()), ['lighthouse', 'plain', 'relay', 'router']);
    for (const n of Object.values(m)) {
      const { config, files } = await bundle(n);
      assert.ok(config.pki.blocklist.includes(doomed.fingerprint), `${n.name} lacks the revoked fingerprint`);
      assert.equal(host.nebulaTest(files, n.name).status, 0, n.name);
    }
  });

  it('provide_lighthouse puts the built-in lighthouse in every node’s config; turning it off takes it out', async () => {
    const port = await freeUdpPort();
    const before = await versions();
    const on = await call(s.url, 'PATCH', `/api/v1/clusters/${k.clusterId}`, { headers: s.op, json: { provide_lighthouse: true, lighthouse_port: port } });
    assert.equal(on.status, 200, JSON.stringify(on.body));
    let builtin: { overlay_ip: string; public_host: string; port: number } | undefined;
    const registered = await waitUntil(async () => {
      const st = await call(s.url, 'GET', `/api/v1/clusters/${k.clusterId}/lighthouses`, { headers: s.op });
      builtin = st.body.lighthouses?.[0];
      return builtin !== undefined;
    }, 20_000, 100);
    assert.ok(registered, 'the server registered no built-in lighthouse');
    assert.equal(builtin!.public_host, '192.0.2.50');
    assert.equal(builtin!.port, port);
    assert.deepEqual(changed(before, await versions()), ['lighthouse', 'plain', 'relay', 'router']);
    for (const n of Object.values(m)) {
      const { config, files } = await bundle(n);
      assert.deepEqual(config.static_host_map[builtin!.overlay_ip], [`192.0.2.50:${port}`], n.name);
      assert.ok(config.lighthouse.hosts.includes(builtin!.overlay_ip), `${n.name}: ${JSON.stringify(config.lighthouse.hosts)}`);
      const verdict = host.nebulaTest(files, n.name);
      assert.equal(verdict.status, 0, `${n.name}: ${verdict.output}`);
    }

    const mid = await versions();
    const off = await call(s.url, 'PATCH', `/api/v1/clusters/${k.clusterId}`, { headers: s.op, json: { provide_lighthouse: false } });
    assert.equal(off.status, 200, JSON.stringify(off.body));
    assert.deepEqual(changed(mid, await versions()), ['lighthouse', 'plain', 'relay', 'router']);
    for (const n of Object.values(m)) {
      const { config, files } = await bundle(n);
      assert.equal(config.static_host_map[builtin!.overlay_ip], undefined, n.name);
      assert.equal(config.lighthouse.hosts.includes(builtin!.overlay_ip), false, n.name);
      assert.equal(host.nebulaTest(files, n.name).status, 0, n.name);
    }
  });

  it('an uploaded template is kept where it does not conflict, and a bad one is caught by nebula -test', async () => {
    const template = [
      'logging:',
      '  level: debug',
      'tun:',
      '  mtu: 9000',
      '  dev: gc0',
      'lighthouse:',
      '  interval: 30',
      'firewall:',
      '  outbound: [{ port: any, proto: any, host: any }]',
      '  inbound: [{ port: 22, proto: tcp, group: admins }]',
      '',
    ].join('\n');
    const up = await call(s.url, 'POST', `/api/v1/config/bundle?cluster_id=${k.clusterId}`, { headers: s.op, raw: await validBundle([], template) });
    assert.equal(up.status, 201, JSON.stringify(up.body));
    const { config, files } = await bundle(m.plain);
    assert.equal(config.logging.level, 'debug');
    assert.equal(config.tun.dev, 'gc0');
    assert.equal(config.tun.mtu, 1400, 'the node’s MTU wins over the template');
    assert.equal(config.lighthouse.interval, 30);
    assert.deepEqual(config.firewall.inbound, [{ port: 22, proto: 'tcp', group: 'admins' }]);
    assert.equal(host.nebulaTest(files, 'plain').status, 0);

    const bad = template.replace('proto: tcp', 'proto: carrier-pigeon');
    const up2 = await call(s.url, 'POST', `/api/v1/config/bundle?cluster_id=${k.clusterId}`, { headers: s.op, raw: await validBundle([], bad) });
    assert.equal(up2.status, 201);
    const rejected = host.nebulaTest((await bundle(m.plain)).files, 'plain');
    assert.notEqual(rejected.status, 0);
    assert.match(rejected.output, /proto/i);
  });

  it('the operator and an admin node can fetch a node’s render with ?node_id=; others cannot', async () => {
    const own = await bundle(m.relay);
    const op = await call(s.url, 'GET', `/api/v1/config/bundle?node_id=${m.relay.id}`, { headers: s.op });
    assert.equal(op.status, 200);
    assert.deepEqual(op.body, own.r.body);
    const admin = await call(s.url, 'GET', `/api/v1/config/bundle?node_id=${m.relay.id}`, { headers: k.admin.headers });
    assert.deepEqual(admin.body, own.r.body);
    const self = await call(s.url, 'GET', `/api/v1/config/bundle?node_id=${m.plain.id}`, { headers: m.plain.headers });
    assert.equal(self.status, 200);
    const peer = await call(s.url, 'GET', `/api/v1/config/bundle?node_id=${m.relay.id}`, { headers: m.plain.headers });
    assert.equal(peer.status, 403);
    const cluster = await call(s.url, 'GET', `/api/v1/config/bundle?node_id=${m.relay.id}`, { headers: { 'x-nebulagc-cluster-token': k.clusterToken } });
    assert.equal(cluster.status, 403);
    const other = await seed(s);
    const foreign = await call(s.url, 'GET', `/api/v1/config/bundle?node_id=${m.relay.id}`, { headers: other.admin.headers });
    assert.equal(foreign.status, 404);
  });

  it('operator and cluster tokens still get the uploaded template bundle', async () => {
    const op = await call(s.url, 'GET', `/api/v1/config/bundle?cluster_id=${k.clusterId}`, { headers: s.op });
    const files = await untarGz(op.body as Buffer);
    assert.deepEqual([...files.keys()].sort(), ['ca.crt', 'config.yml']);
    const ct = await call(s.url, 'GET', '/api/v1/config/bundle', { headers: { 'x-nebulagc-cluster-token': k.clusterToken } });
    assert.deepEqual(ct.body, op.body);
  });
});
