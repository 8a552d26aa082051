import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { health, tenantNames } from '../helpers/probes.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';

const OP = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
const snapshotsServed = (m: ServerProcess): number => (m.output().match(/serving a snapshot/g) ?? []).length;

async function write(n: ServerProcess, names: string[]): Promise<void> {
  for (const name of names) assert.equal((await call(n.url, 'POST', '/api/v1/tenants', { headers: OP, json: { name } })).status, 201);
}

describe('a new replica bootstraps from the backup and streams the rest (NEBULAGC_BOOTSTRAP_FROM_BACKUP)', { timeout: 180_000 }, () => {
  const dir = clusterDir('backup-bootstrap');
  const backup = `file://${path.join(dir.root, 'backup')}`;
  const nodes: ServerProcess[] = [];
  let master: ServerProcess;

  before(async () => {
    master = await startNode('m', dir.root, { NEBULAGC_HA_MODE: 'master', NEBULAGC_LITESTREAM_URL: backup, NEBULAGC_LITESTREAM_SYNC_INTERVAL: '200ms' });
    nodes.push(master);
    await write(master, Array.from({ length: 200 }, (_, i) => `before-${i}`));
    const written = Date.now();
    assert.ok(await waitUntil(async () => Date.parse((await health(master)).backup?.last_success_at ?? '0') > written, 15_000), 'the backup has the writes');
  });
  after(async () => {
    for (const n of nodes) await n.stop();
    dir.remove();
  });

  it('restores the backup, finds it in the master’s log, and follows from there with no snapshot', async () => {
    await write(master, Array.from({ length: 20 }, (_, i) => `between-${i}`));
    const served = snapshotsServed(master);
    const r = await startNode('r1', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, NEBULAGC_LITESTREAM_URL: backup, NEBULAGC_BOOTSTRAP_FROM_BACKUP: 'true' });
    nodes.push(r);
    assert.ok(await waitUntil(async () => (await health(r)).ha_state === 'replica.following', 30_000), r.output().slice(-3000));
    assert.match(r.output(), /bootstrapped from the backup/);
    await write(master, Array.from({ length: 20 }, (_, i) => `after-${i}`));
    assert.ok(await waitUntil(async () => (await health(r)).position?.txid === (await health(master)).position?.txid, 15_000));
    assert.equal((await health(r)).position.checksum, (await health(master)).position.checksum, 'identical to the master');
    assert.deepEqual([...tenantNames(r)].sort(), [...tenantNames(master)].sort());
    assert.equal(snapshotsServed(master), served, 'the master served no snapshot');
  });

  it('a backup the master’s log does not hold (another history) is dropped for a snapshot', async () => {
    const other = `file://${path.join(dir.root, 'other-backup')}`;
    const stranger = await startNode('s', dir.root, { NEBULAGC_LITESTREAM_URL: other, NEBULAGC_LITESTREAM_SYNC_INTERVAL: '200ms' });
    await write(stranger, ['stranger']);
    assert.ok(await waitUntil(async () => (await health(stranger)).backup?.last_success_at !== null, 15_000));
    await stranger.stop();
    const served = snapshotsServed(master);
    const r = await startNode('r2', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, NEBULAGC_LITESTREAM_URL: other, NEBULAGC_BOOTSTRAP_FROM_BACKUP: 'true' });
    nodes.push(r);
    assert.ok(await waitUntil(async () => (await health(r)).ha_state === 'replica.following', 30_000), r.output().slice(-3000));
    assert.match(r.output(), /not in the master’s replication log/);
    assert.equal(snapshotsServed(master), served + 1, 'it took a snapshot');
    assert.ok(!tenantNames(r).has('stranger'));
    assert.equal((await health(r)).position.checksum, (await health(master)).position.checksum);
  });
});
