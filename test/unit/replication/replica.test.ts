import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { openDatabase } from '../../../server/src/db/connection.js';
import { Timeline } from '../../../server/src/ha/timeline.js';
import { createLogger } from '../../../server/src/log.js';
import { readAllPages } from '../../../server/src/replication/db-pages.js';
import { Applier } from '../../../server/src/replication/replica/applier.js';
import { ReplicationReplica, StaleEpochError, UpstreamError, type Divergence } from '../../../server/src/replication/replica/replica.js';
import { checksumPages } from '../../../server/src/replication/wire/checksum.js';
import { UpstreamRefusal } from '../../../server/src/replication/wire/protocol.js';
import { encodeHeartbeat, type Position } from '../../../server/src/replication/wire/record.js';
import { FakeUpstream } from '../../fakes/fake-upstream.js';

const waitFor = async (check: () => boolean, ms = 5000): Promise<boolean> => {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
};

/** The replica against a scripted upstream: the epoch rules and divergence, without a master process. */
describe('ReplicationReplica against a fake upstream', () => {
  let dir: string | undefined;
  let replica: ReplicationReplica | undefined;
  afterEach(async () => {
    await replica?.stop();
    replica = undefined;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A copy at txid 10 of epoch 2, and a replica of it following `upstream`. */
  const start = async (upstream: FakeUpstream, seenEpoch: number) => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-replica-'));
    const dbPath = path.join(dir, 'copy.db');
    const seed = openDatabase(dbPath);
    seed.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('a'), ('b')");
    seed.pragma('wal_checkpoint(TRUNCATE)');
    const sum = checksumPages(4096, readAllPages(seed));
    seed.close();
    const position: Position = { epoch: 2, txid: 10, checksum: sum.value };
    const repDir = path.join(dir, 'rep');
    mkdirSync(repDir);
    await Applier.fromSnapshot(dbPath, path.join(repDir, 'replica.position'), () => {}, sum, position).close();
    const timeline = Timeline.load(dir);
    timeline.see(seenEpoch);
    const errors: unknown[] = [];
    const diverged: { at: Position; d: Divergence; callsBefore: number }[] = [];
    replica = new ReplicationReplica(
      upstream,
      { dbPath, dir: repDir, replicaId: 'r1', advertiseUrl: 'http://127.0.0.1:9', secretFingerprint: '0123456789abcdef', candidate: true, timeline },
      {
        onCopyChanged: () => {},
        onApplied: () => {},
        onHeartbeat: () => {},
        onStreamError: (err) => errors.push(err),
        onMasterAdvertised: () => {},
        onPhase: () => {},
        onRedirected: () => {},
        onDiverged: (at, d) => {
          diverged.push({ at, d, callsBefore: upstream.calls.length });
          return Promise.resolve(() => {});
        },
      },
      createLogger('silent'),
    );
    replica.start();
    return { position, errors, diverged, timeline };
  };

  it('refuses a record of an epoch older than one it has seen, and keeps its copy without a snapshot', async () => {
    const upstream = new FakeUpstream();
    upstream.epoch = 3;
    const { position, errors } = await start(upstream, 3);
    const stream = await upstream.opened();
    assert.equal(upstream.calls[0]!.peer!.seenEpoch, 3, 'the replica tells the master the epoch it has seen');
    stream.write(encodeHeartbeat({ epoch: 2, txid: 10, checksum: position.checksum, masterTimeMs: Date.now() }));
    assert.ok(await waitFor(() => errors.length > 0), 'the stale record ended the stream');
    assert.ok(errors[0] instanceof StaleEpochError, String(errors[0]));
    assert.match((errors[0] as Error).message, /epoch 2 .* but epoch 3 exists/);
    assert.equal(replica!.hasCopy, true, 'the copy still serves');
    assert.deepEqual(replica!.position, position);
    assert.equal(upstream.calls.filter((c) => c.kind === 'snapshot').length, 0, 'no snapshot for a stale master');
  });

  it('accepts records of the epoch it has seen', async () => {
    const upstream = new FakeUpstream();
    upstream.epoch = 2;
    const { position, errors } = await start(upstream, 2);
    const stream = await upstream.opened();
    stream.write(encodeHeartbeat({ epoch: 2, txid: 10, checksum: position.checksum, masterTimeMs: Date.now() }));
    assert.ok(await waitFor(() => replica!.masterPosition?.txid === 10));
    assert.deepEqual(errors, []);
    assert.equal(replica!.connected, true);
  });

  it('will not follow a master whose stream names an older epoch than it has seen', async () => {
    const upstream = new FakeUpstream();
    upstream.epoch = 2;
    const { errors } = await start(upstream, 4);
    assert.ok(await waitFor(() => errors.length > 0));
    assert.ok(errors[0] instanceof UpstreamError);
    assert.match((errors[0] as Error).message, /master of epoch 2, but epoch 4 exists: it is a stale master/);
    assert.equal(replica!.connected, false);
  });

  it('keeps a diverged copy (onDiverged) before it asks for the snapshot that replaces it', async () => {
    const upstream = new FakeUpstream();
    upstream.refuseStream = new UpstreamRefusal(409, 'SNAPSHOT_REQUIRED', { verdict: { kind: 'diverged', forkTxid: 8, transactions: 2 }, master: { epoch: 3, txid: 12, checksum: 'f'.repeat(16) } }, 'diverged');
    const { position, diverged } = await start(upstream, 2);
    assert.ok(await waitFor(() => upstream.calls.some((c) => c.kind === 'snapshot')));
    assert.equal(diverged.length, 1);
    assert.deepEqual(diverged[0]!.at, position);
    assert.deepEqual({ fork: diverged[0]!.d.forkTxid, n: diverged[0]!.d.transactions, epoch: diverged[0]!.d.masterEpoch }, { fork: 8, n: 2, epoch: 3 });
    assert.equal(upstream.calls.slice(0, diverged[0]!.callsBefore).filter((c) => c.kind === 'snapshot').length, 0, 'kept before any snapshot was asked for');
  });

  it('a position the log no longer reaches goes to a snapshot without quarantine', async () => {
    const upstream = new FakeUpstream();
    upstream.refuseStream = new UpstreamRefusal(409, 'SNAPSHOT_REQUIRED', { verdict: { kind: 'snapshot' } }, 'behind');
    const { diverged } = await start(upstream, 2);
    assert.ok(await waitFor(() => upstream.calls.some((c) => c.kind === 'snapshot')));
    assert.equal(diverged.length, 0);
  });
});
