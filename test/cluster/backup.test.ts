import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { masterOf, startAutoCluster, type AutoCluster } from '../helpers/auto-cluster.js';
import { backupFiles, litestreamPids, litestreamSeq, managedConfigFile, restoreFileReplica } from '../helpers/backup.js';
import { validBundle } from '../helpers/bundle.js';
import { clusterDir, freePort, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd, type EtcdServer } from '../helpers/etcd.js';
import { startFakeS3, type FakeS3 } from '../fakes/fake-s3.js';
import { health, metric, tenantNames } from '../helpers/probes.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';

const OP = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const walBytes = (db: string): number => statSync(`${db}-wal`).size;

async function tenant(n: ServerProcess, name: string): Promise<number> {
  return (await call(n.url, 'POST', '/api/v1/tenants', { headers: OP, json: { name } })).status;
}

describe('managed Litestream on a master with a replica (file replica)', { timeout: 240_000 }, () => {
  const dir = clusterDir('backup');
  const backupDir = path.join(dir.root, 'backup');
  let master: ServerProcess;
  let replica: ServerProcess;
  let clusterId: string;

  before(async () => {
    master = await startNode('m', dir.root, {
      NEBULAGC_HA_MODE: 'master',
      NEBULAGC_LITESTREAM_URL: `file://${backupDir}`,
      NEBULAGC_LITESTREAM_SYNC_INTERVAL: '200ms',
      NEBULAGC_MAX_BUNDLE_BYTES: String(8 * 1024 * 1024),
    });
    replica = await startNode('r', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url, NEBULAGC_LITESTREAM_URL: `file://${backupDir}` });
    const t = await call(master.url, 'POST', '/api/v1/tenants', { headers: OP, json: { name: 'backup' } });
    clusterId = (await call(master.url, 'POST', '/api/v1/clusters', { headers: OP, json: { tenant_id: t.body.id, name: 'backup' } })).body.cluster.id;
  });
  after(async () => {
    await replica?.stop();
    await master?.stop();
    dir.remove();
  });

  it('uploads from the master alone, and says so in /health, /metrics and the log', async () => {
    assert.equal(await tenant(master, 'first'), 201);
    assert.ok(await waitUntil(async () => (await health(master)).backup?.last_success_at !== null, 15_000), master.output().slice(-3000));
    const h = (await health(master)).backup;
    assert.equal(h.running, true);
    assert.equal(h.active, true);
    assert.equal(h.errors, 0, h.last_error);
    assert.equal(await metric(master, /^nebulagc_backup_up /), 1);
    assert.ok((await metric(master, /^nebulagc_backup_last_success_timestamp_seconds /)) > Date.now() / 1000 - 60);
    const onReplica = (await health(replica)).backup;
    assert.equal(onReplica.running, false, 'a replica does not upload');
    assert.equal(litestreamPids(managedConfigFile(replica.dbPath)).length, 0);
    assert.equal(litestreamPids(managedConfigFile(master.dbPath)).length, 1);
    assert.equal(statSync(managedConfigFile(master.dbPath)).mode & 0o777, 0o600, 'the config may hold credentials');
    assert.match(master.output(), /"component":"litestream".*"msg":"wal segment written"/);
    assert.ok(backupFiles(backupDir).size > 0);
  });

  it('writes under Litestream’s checkpoints: none fails, and the WAL stays bounded', async () => {
    const seqBefore = litestreamSeq(master.dbPath);
    const latencies: number[] = [];
    const failures: string[] = [];
    let maxWal = 0;
    const until = Date.now() + 15_000;
    for (let i = 0; Date.now() < until; i++) {
      if (i % 10 === 0) {
        const up = await call(master.url, 'POST', `/api/v1/config/bundle?cluster_id=${clusterId}`, {
          headers: OP,
          raw: await validBundle([{ name: 'blob.bin', content: randomBytes(2 * 1024 * 1024) }]),
        });
        if (up.status !== 201) failures.push(`bundle ${up.status}`);
      }
      const started = performance.now();
      const r = await call(master.url, 'POST', '/api/v1/nodes', { headers: OP, json: { cluster_id: clusterId, name: `w${i}` } });
      latencies.push(performance.now() - started);
      if (r.status !== 201) failures.push(`${r.status} ${JSON.stringify(r.body)}`);
      maxWal = Math.max(maxWal, walBytes(master.dbPath));
    }
    assert.deepEqual(failures, [], 'no write failed (SQLITE_BUSY would be a 5xx)');
    const checkpoints = litestreamSeq(master.dbPath) - seqBefore;
    assert.ok(checkpoints >= 2, `Litestream checkpointed during the run (${checkpoints})`);
    latencies.sort((a, b) => a - b);
    console.log(
      `# writes under Litestream checkpoints: ${latencies.length} writes, ${checkpoints} checkpoints, p50 ${latencies[Math.floor(latencies.length / 2)]!.toFixed(1)} ms, p99 ${latencies[Math.floor(latencies.length * 0.99)]!.toFixed(1)} ms, max ${latencies.at(-1)!.toFixed(1)} ms, WAL max ${(maxWal / 1048576).toFixed(1)} MiB`,
    );
    assert.ok(maxWal < 16 * 1024 * 1024, `the WAL stayed bounded (${maxWal} bytes)`);
    assert.ok(await waitUntil(async () => (await health(replica)).position?.txid === (await health(master)).position?.txid, 15_000), 'the replica caught up');
    assert.equal((await health(replica)).position.checksum, (await health(master)).position.checksum, 'and is identical');
  });

  it('an idle master, after a workload that grew the WAL, commits nothing and uploads nothing for 30 s', async () => {
    // More than Litestream's default checkpoint threshold (1,000 pages, 4 MiB) left in the WAL: with its
    // defaults, a PASSIVE checkpoint that cannot restart the WAL ran at every sync from here on.
    for (let i = 0; i < 2; i++) {
      const up = await call(master.url, 'POST', `/api/v1/config/bundle?cluster_id=${clusterId}`, {
        headers: OP,
        raw: await validBundle([{ name: 'blob.bin', content: randomBytes(3 * 1024 * 1024) }]),
      });
      assert.equal(up.status, 201);
    }
    // Settle: Litestream's last checkpoint and upload of that workload.
    await sleep(3000);
    const files = backupFiles(backupDir);
    const seq = litestreamSeq(master.dbPath);
    const txid = (await health(master)).position.txid;
    const replicaTxid = (await health(replica)).position.txid;
    await sleep(30_000);
    assert.equal(litestreamSeq(master.dbPath), seq, 'Litestream committed nothing');
    assert.equal((await health(master)).position.txid, txid, 'no transaction was captured');
    assert.equal((await health(replica)).position.txid, replicaTxid, 'nothing was streamed');
    assert.deepEqual([...backupFiles(backupDir)].sort(), [...files].sort(), 'nothing was uploaded');
    assert.equal(tenantNames(replica).size, tenantNames(master).size);
  });
});

describe('managed Litestream with a backup it cannot reach', { timeout: 120_000 }, () => {
  const dir = clusterDir('backup-bad');
  const nodes: ServerProcess[] = [];
  let s3: FakeS3 | undefined;
  after(async () => {
    for (const n of nodes) await n.stop();
    await s3?.stop();
    dir.remove();
  });

  for (const [label, env] of [
    [
      'refused credentials (a real SigV4 check)',
      async () => {
        s3 = await startFakeS3();
        s3.bucket('nebulagc-test');
        return {
          NEBULAGC_LITESTREAM_URL: 's3://nebulagc-test/db',
          NEBULAGC_LITESTREAM_ENDPOINT: s3.endpoint,
          AWS_ACCESS_KEY_ID: s3.accessKeyId,
          AWS_SECRET_ACCESS_KEY: 'not-the-secret-key-0123456789',
        };
      },
    ],
    ['an unreachable S3 endpoint', async () => ({ NEBULAGC_LITESTREAM_URL: 's3://nebulagc-test/db', NEBULAGC_LITESTREAM_ENDPOINT: `http://127.0.0.1:${await freePort()}` })],
    [
      'an unwritable path',
      async () => {
        const file = path.join(dir.root, 'not-a-dir');
        writeFileSync(file, 'x');
        return { NEBULAGC_LITESTREAM_URL: `file://${file}/backup` };
      },
    ],
  ] as const) {
    it(`${label}: shows in /health, /metrics and the log, and writes go on`, async () => {
      const n = await startNode(`n${nodes.length}`, dir.root, { NEBULAGC_LITESTREAM_SYNC_INTERVAL: '200ms', ...(await env()) });
      nodes.push(n);
      for (let i = 0; i < 5; i++) assert.equal(await tenant(n, `bad-${i}`), 201);
      assert.ok(await waitUntil(async () => (await health(n)).backup?.errors > 0, 30_000), n.output().slice(-3000));
      const b = (await health(n)).backup;
      assert.equal(b.last_success_at, null);
      assert.ok(b.last_error && b.last_error.length > 0);
      assert.ok((await metric(n, /^nebulagc_backup_errors_total /)) > 0);
      assert.match(n.output(), /"level":"error".*"component":"litestream"/);
      assert.doesNotMatch(n.output(), /not-the-secret-key/, 'the secret key is never logged');
      const started = performance.now();
      assert.equal(await tenant(n, 'still-writing'), 201);
      assert.ok(performance.now() - started < 5000, 'a write does not wait for the backup');
    });
  }
});

describe('managed Litestream follows the master (auto mode, etcd)', { timeout: 240_000 }, () => {
  let etcd: EtcdServer;
  let cluster: AutoCluster;
  let nodes: ServerProcess[];
  const dir = clusterDir('backup-auto');
  const backupDir = path.join(dir.root, 'backup');
  let uploaders = 0;
  let watching = true;
  let watcher: Promise<void>;

  before(async () => {
    etcd = await startEtcd();
    cluster = await startAutoCluster('backup-auto', { kind: 'etcd', endpoints: etcd.endpoint }, {
      env: { NEBULAGC_LITESTREAM_URL: `file://${backupDir}`, NEBULAGC_LITESTREAM_SYNC_INTERVAL: '200ms', NEBULAGC_SYNC_REPLICAS: '1' },
    });
    nodes = [...cluster.members];
    watcher = (async () => {
      while (watching) {
        const running = nodes.flatMap((n) => litestreamPids(managedConfigFile(n.dbPath)));
        uploaders = Math.max(uploaders, running.length);
        await sleep(100);
      }
    })();
  });
  after(async () => {
    watching = false;
    await watcher;
    await cluster?.remove();
    await etcd?.stop();
    dir.remove();
  });

  const runningOn = (): string[] => nodes.filter((n) => litestreamPids(managedConfigFile(n.dbPath)).length > 0).map((n) => n.name);

  it('runs on the master only, across a switchover and a kill -9, and a restore holds the writes of both masters', async () => {
    const first = (await masterOf(nodes))!;
    assert.ok(await waitUntil(() => runningOn().length === 1 && runningOn()[0] === first.name, 15_000), `only on the master: ${runningOn()}`);
    for (let i = 0; i < 5; i++) assert.equal(await tenant(first, `m1-${i}`), 201);

    const res = await call(first.url, 'POST', '/cluster/switchover', { headers: OP, json: {} });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    let second: ServerProcess | undefined;
    assert.ok(await waitUntil(async () => (second = await masterOf(nodes)) !== undefined && second !== first, 15_000));
    assert.ok(await waitUntil(() => runningOn().length === 1 && runningOn()[0] === second!.name, 15_000), `moved to the new master: ${runningOn()}`);
    assert.equal((await health(first)).backup.running, false);
    for (let i = 0; i < 5; i++) assert.equal(await tenant(second!, `m2-${i}`), 201);

    await second!.kill9();
    assert.ok(await waitUntil(() => litestreamPids(managedConfigFile(second!.dbPath)).length === 0, 5000), 'the killed master’s litestream went with it (no orphan)');
    let third: ServerProcess | undefined;
    assert.ok(await waitUntil(async () => (third = await masterOf(nodes.filter((n) => n !== second))) !== undefined, 20_000));
    assert.ok(await waitUntil(() => runningOn().length === 1 && runningOn()[0] === third!.name, 15_000), `on the newest master: ${runningOn()}`);
    for (let i = 0; i < 5; i++) assert.equal(await tenant(third!, `m3-${i}`), 201);
    assert.ok(await waitUntil(async () => (await health(third!)).backup.last_success_at !== null, 10_000));
    await sleep(1500);
    assert.equal(uploaders, 1, 'never two nodes uploading at once');

    const restored = restoreFileReplica(backupDir, path.join(path.dirname(backupDir), 'restored.db'));
    for (const p of ['m1', 'm2', 'm3']) for (let i = 0; i < 5; i++) assert.ok(restored.has(`${p}-${i}`), `${p}-${i} is in the restore`);
  });
});
