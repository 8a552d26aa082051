import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { clusterDir, REPLICATION_SECRET, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { alive, freeUdpPort, killMentioning, processesMentioning, udpBound } from '../helpers/lighthouse.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';

const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

/**
 * A master and a replica as separate processes, each running its own lighthouse for the same
 * cluster on its own loopback address: the replica registers through the master.
 */
describe('built-in lighthouses on a master and a replica', { timeout: 120_000 }, () => {
  const dir = clusterDir('lighthouses');
  let master: ServerProcess;
  let replica: ServerProcess;
  let clusterId: string;
  let nodeToken: string;
  let port: number;

  before(async () => {
    master = await startNode('master', dir.root, {
      NEBULAGC_HA_MODE: 'master',
      NEBULAGC_LIGHTHOUSE_LISTEN_HOST: '127.0.0.2',
      NEBULAGC_LIGHTHOUSE_PUBLIC_HOST: '127.0.0.2',
    });
    replica = await startNode('replica', dir.root, {
      NEBULAGC_HA_MODE: 'replica',
      NEBULAGC_MASTER_URL: master.url,
      NEBULAGC_LIGHTHOUSE_LISTEN_HOST: '127.0.0.3',
      NEBULAGC_LIGHTHOUSE_PUBLIC_HOST: '127.0.0.3',
    });
    port = await freeUdpPort();
  });
  after(async () => {
    await replica?.stop();
    await master?.stop();
    killMentioning(dir.root);
    dir.remove();
  });

  it('both servers run a lighthouse; two registrations with distinct overlay IPs', async () => {
    const t = await call(master.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'lh' } });
    assert.equal(t.status, 201, JSON.stringify(t.body));
    const c = await call(master.url, 'POST', '/api/v1/clusters', {
      headers: op,
      json: { tenant_id: t.body.id, name: 'lh', provide_lighthouse: true, lighthouse_port: port },
    });
    assert.equal(c.status, 201, JSON.stringify(c.body));
    assert.equal(c.body.cluster.provide_lighthouse, true);
    clusterId = c.body.cluster.id;
    const n = await call(master.url, 'POST', '/api/v1/nodes', { headers: op, json: { cluster_id: clusterId, name: 'n1', overlay_ip: '10.42.0.1' } });
    assert.equal(n.status, 201);
    nodeToken = n.body.token;

    const local = async (s: ServerProcess) => (await call(s.url, 'GET', `/api/v1/clusters/${clusterId}/lighthouses`, { headers: op })).body;
    let seen: unknown;
    const ready = await waitUntil(async () => {
      const [m, r] = [await local(master), await local(replica)];
      seen = { m, r };
      return m.lighthouses.length === 2 && r.lighthouses.length === 2 && m.local?.state === 'running' && r.local?.state === 'running';
    }, 30_000, 100);
    assert.ok(ready, `${JSON.stringify(seen)}\n--- master\n${master.output().slice(-3000)}\n--- replica\n${replica.output().slice(-3000)}`);

    const topo = await call(replica.url, 'GET', '/api/v1/topology', { headers: { 'x-nebulagc-node-token': nodeToken } });
    assert.equal(topo.status, 200);
    const rows = topo.body.builtin_lighthouses as { server_id: string; overlay_ip: string; public_host: string; port: number }[];
    assert.deepEqual(rows.map((r) => [r.server_id, r.public_host, r.port]), [['master', '127.0.0.2', port], ['replica', '127.0.0.3', port]]);
    assert.notEqual(rows[0]!.overlay_ip, rows[1]!.overlay_ip);
    assert.deepEqual(new Set(rows.map((r) => r.overlay_ip)), new Set(['10.42.255.254', '10.42.255.253']));
    assert.ok(await waitUntil(() => udpBound('127.0.0.2', port) && udpBound('127.0.0.3', port), 10_000), 'both lighthouses bind their UDP port');
    assert.equal(processesMentioning(dir.root).length, 2);
  });

  it('the internal registration endpoint takes only the replication secret', async () => {
    const body = { cluster_id: clusterId, server_id: 'intruder', public_key: 'x', public_host: '127.0.0.9', port };
    const attempts: Record<string, string>[] = [op, { 'x-nebulagc-node-token': nodeToken }, { authorization: `Bearer ${nodeToken}` }, {}];
    for (const headers of attempts) {
      const r = await call(master.url, 'POST', '/internal/v1/lighthouses', { headers, json: body });
      assert.equal(r.status, 401, JSON.stringify(r.body));
    }
    const bad = await call(master.url, 'POST', '/internal/v1/lighthouses', { headers: { authorization: `Bearer ${REPLICATION_SECRET}` }, json: body });
    assert.equal(bad.status, 400, 'with the secret it gets as far as validating the body');
  });

  it('stopping the servers stops their lighthouses', async () => {
    const pids = processesMentioning(dir.root);
    await replica.stop();
    await master.stop();
    assert.ok(pids.every((p) => !alive(p)));
    assert.deepEqual(processesMentioning(dir.root), []);
  });
});
