import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { waitUntil } from '../helpers/cluster.js';
import { seed, type Seeded } from '../helpers/fixtures.js';
import { alive, freeUdpPort, killMentioning, processesMentioning, udpBound } from '../helpers/lighthouse.js';
import { NebulaHost } from '../helpers/nebula.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

const SERVER_ID = 'cp-a';
const TOP_IP = '10.42.255.254';

/** Built-in lighthouses on a standalone server, with the real nebula and nebula-cert. */
describe('built-in lighthouses', { timeout: 120_000 }, () => {
  let s: TestServer;
  let k: Seeded;
  let host: NebulaHost;
  let port: number;
  before(async () => {
    s = await startTestServer({ NEBULAGC_NODE_ID: SERVER_ID, NEBULAGC_LIGHTHOUSE_LISTEN_HOST: '127.0.0.1', NEBULAGC_LIGHTHOUSE_PUBLIC_HOST: '192.0.2.10' });
    k = await seed(s);
    host = new NebulaHost();
    port = await freeUdpPort();
  });
  after(async () => {
    host.cleanup();
    const dir = s.dir;
    await s.stop();
    killMentioning(dir);
  });

  const lhDir = (clusterId = k.clusterId): string => `${s.dbPath}-lighthouses/${clusterId}`;
  const status = async (clusterId = k.clusterId) => {
    const r = await call(s.url, 'GET', `/api/v1/clusters/${clusterId}/lighthouses`, { headers: s.op });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body;
  };
  const cluster = async () => (await call(s.url, 'GET', `/api/v1/clusters/${k.clusterId}`, { headers: s.op })).body;
  const patch = (json: unknown, id = k.clusterId) => call(s.url, 'PATCH', `/api/v1/clusters/${id}`, { headers: s.op, json });
  /** Waits for a running lighthouse whose pid is not `old`, and returns the status. */
  const runningOther = async (old: number | null) => {
    let st: any;
    const ok = await waitUntil(async () => {
      st = await status();
      return st.local?.state === 'running' && st.local.pid !== old && st.lighthouses.length === 1;
    }, 20_000, 100);
    assert.ok(ok, `no running lighthouse other than pid ${old}: ${JSON.stringify(st)}`);
    return st;
  };

  let pid: number;

  it('turning provide_lighthouse on starts a real nebula lighthouse with a certificate of the cluster CA', async () => {
    const before = (await cluster()).config_version;
    const r = await patch({ provide_lighthouse: true, lighthouse_port: port });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.provide_lighthouse, true);
    assert.ok(r.body.config_version > before);

    const st = await runningOther(null);
    pid = st.local.pid;
    assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' '), /nebula -config \/.*\/config\.yml/);
    assert.ok(await waitUntil(() => udpBound('127.0.0.1', port), 10_000), `UDP 127.0.0.1:${port} is not bound`);

    const [row] = st.lighthouses;
    assert.equal(row.server_id, SERVER_ID);
    assert.equal(row.overlay_ip, TOP_IP, 'the highest free address of 10.42.0.0/16');
    assert.equal(row.public_host, '192.0.2.10');
    assert.equal(row.port, port);
    const c = await cluster();
    const cert = readFileSync(`${lhDir()}/host.crt`, 'utf8');
    assert.equal(host.verify(c.ca_cert, cert).status, 0);
    const printed = host.print(cert);
    assert.equal(printed.fingerprint, row.cert_fingerprint);
    assert.equal(printed.details.name, `nebulagc-lighthouse-${SERVER_ID}`);
    assert.deepEqual(printed.details.ips, [`${TOP_IP}/16`]);

    assert.equal(statSync(`${lhDir()}/host.key`).mode & 0o777, 0o600);
    const config = readFileSync(`${lhDir()}/config.yml`, 'utf8');
    assert.match(config, /am_lighthouse: true/);
    assert.match(config, /disabled: true/);

    const topo = await call(s.url, 'GET', '/api/v1/topology', { headers: k.node.headers });
    assert.deepEqual(topo.body.builtin_lighthouses, [{ server_id: SERVER_ID, overlay_ip: TOP_IP, public_host: '192.0.2.10', port }]);
  });

  it('a node cannot take a built-in lighthouse’s overlay IP', async () => {
    const created = await call(s.url, 'POST', '/api/v1/nodes', { headers: s.op, json: { cluster_id: k.clusterId, name: 'squatter', overlay_ip: TOP_IP } });
    assert.equal(created.status, 409, JSON.stringify(created.body));
    assert.equal(created.body.code, 'CONFLICT');
    const moved = await call(s.url, 'PATCH', `/api/v1/nodes/${k.node.id}`, { headers: s.op, json: { overlay_ip: TOP_IP } });
    assert.equal(moved.status, 409, JSON.stringify(moved.body));
  });

  it('two clusters providing lighthouses cannot share a UDP port', async () => {
    const other = await seed(s);
    const r = await patch({ provide_lighthouse: true, lighthouse_port: port }, other.clusterId);
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.equal(r.body.code, 'CONFLICT');
  });

  it('kill -9 of nebula: restarted with a new pid, counted in the metrics', async () => {
    process.kill(pid, 'SIGKILL');
    const st = await runningOther(pid);
    assert.ok(st.local.restarts >= 1);
    pid = st.local.pid;
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /^nebulagc_lighthouse_restarts_total [1-9]/m);
    assert.match(metrics, /^nebulagc_lighthouses_running 1$/m);
  });

  it('deleting an enrolled node puts its fingerprint in the lighthouse’s blocklist and restarts it', async () => {
    const { publicKey } = host.keygen('host');
    const enrolled = await call(s.url, 'POST', '/api/v1/enroll', { headers: k.node.headers, json: { public_key: publicKey } });
    assert.equal(enrolled.status, 200, JSON.stringify(enrolled.body));
    const pidBefore = (await runningOther(null)).local.pid as number;
    const del = await call(s.url, 'DELETE', `/api/v1/nodes/${k.node.id}`, { headers: s.op });
    assert.equal(del.status, 204);
    const st = await runningOther(pidBefore);
    assert.match(readFileSync(`${lhDir()}/config.yml`, 'utf8'), new RegExp(enrolled.body.fingerprint));
    assert.equal(alive(pidBefore), false);
    pid = st.local.pid;
  });

  it('CA rotation: re-registered with a certificate of the new CA, and restarted', async () => {
    const oldCa = (await cluster()).ca_cert;
    const r = await call(s.url, 'POST', `/api/v1/clusters/${k.clusterId}/rotate-ca`, { headers: s.op });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const newCa = r.body.ca_cert;
    assert.notEqual(newCa, oldCa);
    let st: any;
    assert.ok(
      await waitUntil(async () => {
        st = await status();
        return st.local?.state === 'running' && st.local.pid !== pid && readFileSync(`${lhDir()}/ca.crt`, 'utf8') === newCa;
      }, 20_000, 100),
      JSON.stringify(st),
    );
    const cert = readFileSync(`${lhDir()}/host.crt`, 'utf8');
    assert.equal(host.verify(newCa, cert).status, 0);
    assert.notEqual(host.verify(oldCa, cert).status, 0);
    assert.equal(host.print(cert).fingerprint, st.lighthouses[0].cert_fingerprint);
    assert.equal(st.lighthouses[0].overlay_ip, TOP_IP, 'the server keeps its address');
    pid = st.local.pid;
  });

  it('a new port moves the registration and the listening socket', async () => {
    const newPort = await freeUdpPort();
    const r = await patch({ lighthouse_port: newPort });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const st = await runningOther(pid);
    assert.equal(st.lighthouses[0].port, newPort);
    assert.ok(await waitUntil(() => udpBound('127.0.0.1', newPort) && !udpBound('127.0.0.1', port), 10_000));
    port = newPort;
    pid = st.local.pid;
  });

  it('turning the flag off stops the process and drops the registration; deleting the cluster does too', async () => {
    const r = await patch({ provide_lighthouse: false });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(await waitUntil(async () => (await status()).local === null && !alive(pid), 10_000, 100));
    assert.deepEqual((await status()).lighthouses, []);
    assert.deepEqual(processesMentioning(s.dir), []);

    await patch({ provide_lighthouse: true });
    const st = await runningOther(pid);
    pid = st.local.pid;
    const del = await call(s.url, 'DELETE', `/api/v1/clusters/${k.clusterId}`, { headers: s.op });
    assert.equal(del.status, 204);
    assert.ok(await waitUntil(() => !alive(pid) && processesMentioning(s.dir).length === 0, 10_000, 100), 'a nebula process outlived its cluster');
    assert.ok(await waitUntil(() => {
      try {
        statSync(lhDir());
        return false;
      } catch {
        return true;
      }
    }, 5000), 'the deleted cluster’s key directory is still there');
  });

  it('closing the server leaves no nebula process behind', async () => {
    const other = await seed(s);
    const p = await freeUdpPort();
    assert.equal((await patch({ provide_lighthouse: true, lighthouse_port: p }, other.clusterId)).status, 200);
    let last: number | undefined;
    assert.ok(await waitUntil(async () => {
      last = (await status(other.clusterId)).local?.pid;
      return last !== undefined && last !== null && alive(last);
    }, 20_000, 100));
    await s.server.close();
    assert.equal(alive(last!), false);
    assert.deepEqual(processesMentioning(s.dir), []);
  });
});
