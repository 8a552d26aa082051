import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { openStore, type OpenedStore } from '../../../server/src/db/open-store.js';
import { createLogger } from '../../../server/src/log.js';
import { checksumPages } from '../../../server/src/replication/wire/checksum.js';
import { ReplicationMaster } from '../../../server/src/replication/master/master.js';
import { decodeRecord, isDelta, RECORD_TX } from '../../../server/src/replication/wire/record.js';
import { pagesOf, tempDir, type TempDir } from './fixtures.js';

const SECRET = 'master-test-secret-0123456789abcdef0123';
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('ReplicationMaster', () => {
  let tmp: TempDir | undefined;
  let opened: OpenedStore | undefined;
  let master: ReplicationMaster | undefined;
  afterEach(async () => {
    await master?.close();
    opened?.close();
    tmp?.remove();
    master = undefined;
    opened = undefined;
    tmp = undefined;
  });

  const start = (walCheckpointBytes: number): { dbPath: string; write: (v: string) => void } => {
    tmp = tempDir('master');
    const dbPath = tmp.file('db.sqlite');
    opened = openStore({ dbPath, synchronous: 'NORMAL', secret: SECRET });
    const log = { maxBytes: 1 << 30, maxAgeMs: 3_600_000, memoryBytes: 1 << 26 };
    master = new ReplicationMaster(opened.store.writer, { dbPath, dir: path.join(tmp.path, 'rep'), log, walCheckpointBytes, epoch: 1, history: () => [] }, createLogger('error'));
    const { writer } = opened.store;
    writer.write('test.setup', (db) => db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)'));
    const insert = writer.db.prepare('INSERT INTO t (v) VALUES (?)');
    return { dbPath, write: (v) => writer.write('test.insert', () => insert.run(v)) };
  };

  it('commits of one turn are captured together, and positionNow() captures them at once', async () => {
    const { write } = start(0);
    await turn();
    const before = master!.position.txid;
    for (let i = 0; i < 5; i++) write(`row ${i}`);
    assert.equal(master!.position.txid, before, 'reading the position has no side effect: nothing captured yet');
    // A write response's X-NebulaGC-TxID reads positionNow() right after the commit.
    assert.equal(master!.positionNow().txid, before + 5);
    assert.equal(master!.log.durableTxid, before + 5, 'and the records are in the log file, ready for the streams');
    for (let i = 0; i < 3; i++) write(`more ${i}`);
    await turn();
    assert.equal(master!.log.durableTxid, before + 8, 'without a reader, the end of the turn captures them');
    const times = [...master!.log.recordsAfter(before)].map((b) => {
      const r = decodeRecord(b);
      assert.equal(r.type, RECORD_TX);
      return r.type === RECORD_TX ? r.commitTimeMs : NaN;
    });
    assert.equal(times.length, 8);
    for (let i = 1; i < times.length; i++) assert.ok(times[i]! >= times[i - 1]!, 'each carries its own commit time, in order');
  });

  it('logs a page it has logged before as a delta: small writes make small records', async () => {
    const { write } = start(0);
    await turn();
    const before = master!.position.txid;
    for (let i = 0; i < 20; i++) write(`row ${i}`);
    master!.captureNow();
    const records = [...master!.log.recordsAfter(before)];
    assert.equal(records.length, 20);
    const pages = records.flatMap((b) => {
      const r = decodeRecord(b);
      return r.type === RECORD_TX ? r.pages : [];
    });
    const deltas = pages.filter(isDelta).length;
    // The first write may bring a page the log has not seen; every later one rewrites the same leaf.
    assert.ok(deltas >= pages.length - 2, `${deltas} of ${pages.length} pages as deltas`);
    assert.ok(records.slice(1).every((b) => b.length < 1024), `record sizes ${records.map((b) => b.length).join(', ')}`);
  });

  it('checkpoints in steps reuse the WAL file, and the log keeps matching the database', async () => {
    const step = 64 * 1024;
    const { dbPath, write } = start(step);
    const seen: boolean[] = [];
    master!.events.onTransactions = (txs) => seen.push(...txs.map((t) => t.resync));
    let largest = 0;
    for (let round = 0; round < 40; round++) {
      for (let i = 0; i < 10; i++) write(`round ${round} row ${i} ${'x'.repeat(200)}`);
      await turn();
      // The bulk of a checkpoint runs on its own thread; the step ends back on this one.
      const deadline = Date.now() + 5000;
      while (master!.checkpointing && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
      assert.equal(master!.checkpointing, false, 'the checkpoint finished');
      largest = Math.max(largest, statSync(`${dbPath}-wal`).size);
    }
    assert.ok(seen.length >= 400);
    assert.ok(seen.every((resync) => !resync), 'our own checkpoints never make the capture compare pages');
    // About 400 frames of 4 KiB went through the WAL; steps of 64 KiB keep the file near one step.
    assert.ok(largest < 4 * step, `the WAL reached ${largest} bytes`);
    const end = master!.position;
    const fromScratch = checksumPages(4096, pagesOf(dbPath).map((data, i) => ({ pgno: i + 1, data }))).value;
    assert.equal(end.checksum, fromScratch, 'the last position carries the checksum of the database file');
  });
});
