import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startAutoCluster, type AutoCluster } from '../helpers/auto-cluster.js';
import { clusterDir, type ServerProcess } from '../helpers/cluster.js';
import { disasterRound } from '../helpers/dr-drill.js';
import { startEtcd, type EtcdServer } from '../helpers/etcd.js';
import { startFakeS3, type FakeS3 } from '../fakes/fake-s3.js';
import path from 'node:path';

/** Litestream copies the WAL every second (its monitor interval) and uploads every sync interval; the rest is upload time. */
const SYNC_INTERVAL_MS = 1000;
const GUARANTEED_MS = SYNC_INTERVAL_MS + 2000;

for (const target of ['S3 (fake)', 'file'] as const) {
  describe(`DR drill: every node lost, one restored from ${target}, the others copy from it`, { timeout: 300_000 }, () => {
    let etcd: EtcdServer;
    let s3: FakeS3 | undefined;
    let cluster: AutoCluster;
    let nodes: ServerProcess[];
    const dir = clusterDir('dr');

    before(async () => {
      etcd = await startEtcd();
      let backup: Record<string, string>;
      if (target === 'file') backup = { NEBULAGC_LITESTREAM_URL: `file://${path.join(dir.root, 'backup')}` };
      else {
        s3 = await startFakeS3();
        s3.bucket('nebulagc-dr');
        backup = {
          NEBULAGC_LITESTREAM_URL: 's3://nebulagc-dr/cluster-a',
          NEBULAGC_LITESTREAM_ENDPOINT: s3.endpoint,
          AWS_ACCESS_KEY_ID: s3.accessKeyId,
          AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
        };
      }
      cluster = await startAutoCluster(`dr-${target === 'file' ? 'file' : 's3'}`, { kind: 'etcd', endpoints: etcd.endpoint }, {
        env: { ...backup, NEBULAGC_LITESTREAM_SYNC_INTERVAL: `${SYNC_INTERVAL_MS}ms`, NEBULAGC_RESTORE_ON_BOOT: 'true', NEBULAGC_LOG_LEVEL: 'info' },
      });
      nodes = [...cluster.members];
    });
    after(async () => {
      await cluster?.remove();
      await etcd?.stop();
      await s3?.stop();
      dir.remove();
    });

    it('comes back with every write acknowledged before the sync interval plus a margin, twice in a row', async () => {
      for (let round = 0; round < 2; round++) {
        const r = await disasterRound(cluster, nodes, `dr-${round}`, GUARANTEED_MS);
        assert.ok(r.acked > 0);
        console.log(`# DR ${target} round ${round + 1}: ${r.acked} acknowledged, ${r.lost} lost, RPO ${r.rpoMs.toFixed(0)} ms, restored and serving in ${r.restoreMs.toFixed(0)} ms`);
      }
    });
  });
}
