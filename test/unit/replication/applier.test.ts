/**
 * The applier, in process: pages applied through sqlite_dbpage, verified against the master's
 * checksum, grouped, replayed after a crash; and a replica facing a master of another record
 * format (an HTTP server that answers as an older release). Moved out of the multi-process
 * fault tests, which start real servers; these start none.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { openDatabase } from '../../../server/src/db/connection.js';
import { createLogger } from '../../../server/src/log.js';
import { Applier, ApplyError } from '../../../server/src/replication/replica/applier.js';
import { PositionFile } from '../../../server/src/replication/replica/position-file.js';
import { ReplicationReplica } from '../../../server/src/replication/replica/replica.js';
import { checksumPages } from '../../../server/src/replication/wire/checksum.js';
import { HttpUpstream } from '../../../server/src/replication/wire/http-upstream.js';
import { InternalClient } from '../../../server/src/replication/wire/internal-client.js';
import { PageImages } from '../../../server/src/replication/wire/page-delta.js';
import {
  decodeRecord,
  encodeTx,
  isDelta,
  type PagePlan,
  type TxInput,
  type TxRecord,
} from '../../../server/src/replication/wire/record.js';
import { waitUntil } from '../../helpers/cluster.js';
import { assertSamePages, integrity, pages } from '../../helpers/db-files.js';
import { quietReplicaHooks, replicaIdentity } from '../../helpers/replica.js';
import { REPLICATION_SECRET } from '../../helpers/cluster.js';

/** A replica's file and a master's copy of it, seeded with `rows` rows, in a temp dir. */
function applierFiles(rows: number): { dir: string; replicaFile: string; masterFile: string; stateFile: string; startPages: Buffer[] } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-applier-'));
  const replicaFile = path.join(dir, 'replica.db');
  const masterFile = path.join(dir, 'master.db');
  const seed = openDatabase(replicaFile);
  seed.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
  const ins = seed.prepare('INSERT INTO t (v) VALUES (?)');
  for (let i = 0; i < rows; i++) ins.run(`row ${i} `.repeat(20));
  seed.pragma('wal_checkpoint(TRUNCATE)');
  seed.close();
  copyFileSync(replicaFile, masterFile);
  return { dir, replicaFile, masterFile, stateFile: path.join(dir, 'replica.position'), startPages: pages(replicaFile) };
}

/**
 * The master's next transaction: runs `sql` on the master's file and returns the pages it
 * changed against `before` (page 1 last) and the record that ships them, with the checksum of
 * the whole file after it.
 */
function masterTx(masterFile: string, before: Buffer[], txid: number, sql: string): { after: Buffer[]; changed: { pgno: number; data: Buffer }[]; record: TxInput; plan: PagePlan } {
  const m = openDatabase(masterFile);
  m.exec(sql);
  m.pragma('wal_checkpoint(TRUNCATE)');
  m.close();
  const after = pages(masterFile);
  const changed = after
    .map((data, i) => ({ pgno: i + 1, data }))
    .filter((p) => !before[p.pgno - 1]?.equals(p.data))
    .sort((a, b) => (a.pgno === 1 ? 1 : b.pgno === 1 ? -1 : a.pgno - b.pgno));
  const checksum = checksumPages(4096, after.map((data, i) => ({ pgno: i + 1, data }))).value;
  // The deltas the master would send, its images being the pages before.
  const images = new PageImages(4096, 1024);
  images.plan(before.map((data, i) => ({ pgno: i + 1, data })), before.length);
  const plan = images.plan(changed, after.length);
  return { after, changed, record: { epoch: 1, txid, pageSize: 4096, dbSize: after.length, commitTimeMs: Date.now(), pages: changed, checksum }, plan };
}

/** A replica copy of 50 rows opened at txid 10 (as from a snapshot), and the master's txid 11 running `sql`. */
function copyAtTenThen(sql: string): { dir: string; replicaFile: string; stateFile: string; t: ReturnType<typeof masterTx>; applier: Applier } {
  const { dir, replicaFile, masterFile, stateFile, startPages } = applierFiles(50);
  const start = checksumPages(4096, startPages.map((data, i) => ({ pgno: i + 1, data })));
  const startValue = start.value;
  const t = masterTx(masterFile, startPages, 11, sql);
  const applier = Applier.fromSnapshot(replicaFile, stateFile, () => {}, start, { epoch: 1, txid: 10, checksum: startValue });
  return { dir, replicaFile, stateFile, t, applier };
}

describe('Applier (unit)', () => {
  it('a byte changed before sealing (crc right, content wrong) fails the checksum; the copy rolls back and needs a snapshot', () => {
    const { dir, replicaFile, masterFile, stateFile, startPages: before } = applierFiles(200);
    try {
      const start = checksumPages(4096, before.map((data, i) => ({ pgno: i + 1, data })));
      const inserts = Array.from({ length: 50 }, (_, i) => `INSERT INTO t (v) VALUES ('${`new ${i} `.repeat(30)}');`).join(' ');
      const { after: afterPages, changed, record: good } = masterTx(masterFile, before, 11, `UPDATE t SET v = 'changed' WHERE id = 7; ${inserts}`);
      assert.ok(changed.length >= 2);
      const damaged = changed.map((p) => ({ pgno: p.pgno, data: Buffer.from(p.data) }));
      damaged[0]!.data[2000]! ^= 0x20;
      const bad = decodeRecord(encodeTx({ ...good, pages: damaged })) as TxRecord;
      const warnings: string[] = [];
      const warn = (msg: string): void => void warnings.push(msg);

      let applier = Applier.fromSnapshot(replicaFile, stateFile, warn, start, { epoch: 1, txid: 10, checksum: start.value });
      assert.throws(() => applier.apply([bad]), (e: Error) => e instanceof ApplyError && /checksum mismatch after txid 11/.test(e.message));
      assert.equal(applier.isBroken, true, 'the copy is known to be wrong');
      assert.equal(applier.position.txid, 10);
      assert.throws(() => applier.apply([decodeRecord(encodeTx(good)) as TxRecord]), /needs a snapshot/, 'a broken copy takes nothing more');
      applier.close();
      assertSamePages(before, pages(replicaFile), 'after the refused transaction');

      // A gap is refused too.
      applier = Applier.open(replicaFile, stateFile, warn)!;
      assert.equal(applier.position.txid, 10, 'the durable position did not move');
      assert.throws(() => applier.apply([{ ...(decodeRecord(encodeTx(good)) as TxRecord), txid: 12 }]), /expected txid 11, got 12/);
      applier.close();
      assertSamePages(before, pages(replicaFile), 'after the refused gap');

      // The undamaged record applies and makes the copy identical to the master.
      applier = Applier.open(replicaFile, stateFile, warn)!;
      assert.equal(applier.apply([decodeRecord(encodeTx(good)) as TxRecord]).txid, 11);
      applier.close();
      assertSamePages(afterPages, pages(replicaFile), 'after the good transaction');
      assert.equal(integrity(replicaFile), 'ok');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('deltas are rebuilt on the copy’s own pages, byte for byte; on a base the master did not have, the copy is refused as diverged', () => {
    const { dir, replicaFile, masterFile, stateFile, startPages } = applierFiles(100);
    try {
      const start = checksumPages(4096, startPages.map((data, i) => ({ pgno: i + 1, data })));
      const t11 = masterTx(masterFile, startPages, 11, "UPDATE t SET v = 'eleven' WHERE id = 3");
      const t12 = masterTx(masterFile, t11.after, 12, "UPDATE t SET v = 'twelve' WHERE id IN (3, 90)");
      const t13 = masterTx(masterFile, t12.after, 13, "INSERT INTO t (v) VALUES ('more'); DELETE FROM t WHERE id > 95");
      const records = [t11, t12, t13].map((t) => decodeRecord(encodeTx(t.record, t.plan)) as TxRecord);
      const whole = [t11, t12, t13].reduce((n, t) => n + encodeTx(t.record).length, 0);
      const sent = [t11, t12, t13].reduce((n, t) => n + encodeTx(t.record, t.plan).length, 0);
      assert.ok(sent * 4 < whole, `deltas: ${sent} bytes, whole pages: ${whole}`);
      assert.ok(records.every((r) => r.pages.some(isDelta)));

      let applier = Applier.fromSnapshot(replicaFile, stateFile, () => {}, start.clone(), { epoch: 1, txid: 10, checksum: start.value });
      // 11 on the file's pages, 12 on what 11 wrote (the last group's images), 13 in a batch of its own.
      assert.equal(applier.apply(records.slice(0, 2)).txid, 12);
      assertSamePages(t12.after, pages(replicaFile), 'after 11 and 12');
      assert.equal(applier.apply(records.slice(2)).txid, 13);
      applier.close();
      assertSamePages(pages(masterFile), pages(replicaFile), 'after 13');
      assert.equal(integrity(replicaFile), 'ok');

      // A master whose page differs from the copy's by one byte the transaction does not
      // touch sends a delta that leaves the copy's byte in place: the rebuilt page is not the
      // master's.
      const t14 = masterTx(masterFile, t12.after, 14, "UPDATE t SET v = 'fourteen' WHERE id = 3");
      const at = t14.changed.findIndex((p, i) => p.pgno !== 1 && t14.plan[i]);
      const pgno = t14.changed[at]!.pgno;
      const runs = t14.plan[at]!;
      const untouched = [...Array(4096).keys()].find((b) => b >= 100 && !runs.some((_, i) => i % 2 === 0 && b >= runs[i]! - 8 && b < runs[i]! + runs[i + 1]! + 8))!;
      const flipped = (data: Buffer): Buffer => {
        const b = Buffer.from(data);
        b[untouched]! ^= 0x01;
        return b;
      };
      const images = new PageImages(4096, 1024);
      images.plan(pages(replicaFile).map((data, i) => ({ pgno: i + 1, data: i + 1 === pgno ? flipped(data) : data })), t14.after.length);
      const changed = t14.changed.map((p) => (p.pgno === pgno ? { pgno, data: flipped(p.data) } : p));
      const diverged = decodeRecord(encodeTx({ ...t14.record, pages: changed }, images.plan(changed, t14.after.length))) as TxRecord;
      const onFile = pages(replicaFile);
      applier = Applier.open(replicaFile, stateFile, () => {})!;
      assert.equal(applier.position.txid, 13);
      assert.throws(() => applier.apply([diverged]), (e: Error) => e instanceof ApplyError && new RegExp(`page ${pgno} does not match`).test(e.message));
      assert.equal(applier.isBroken, true);
      applier.close();
      assertSamePages(onFile, pages(replicaFile), 'nothing of the refused transaction was written');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a position file left behind the copy (a power loss) is replayed from until the checksums agree', () => {
    const { dir, replicaFile, masterFile, stateFile, startPages } = applierFiles(100);
    try {
      const start = checksumPages(4096, startPages.map((data, i) => ({ pgno: i + 1, data })));
      // The applier takes `start` over and moves it along.
      const startValue = start.value;
      let prev = startPages;
      // As the master sends them: pages it had before go as deltas, whose pages' hashes come
      // along, so a replay moves the checksum without the base images.
      const tx = (txid: number, sql: string): TxRecord => {
        const t = masterTx(masterFile, prev, txid, sql);
        prev = t.after;
        const r = decodeRecord(encodeTx(t.record, t.plan)) as TxRecord;
        assert.ok(r.pages.some(isDelta), `txid ${txid} has deltas`);
        return r;
      };
      const tx11 = tx(11, "UPDATE t SET v = 'eleven' WHERE id = 3");
      // 12 rewrites a row 11 wrote too, so replaying 11 over the file would bring back an older image.
      const tx12 = tx(12, "UPDATE t SET v = 'twelve' WHERE id IN (3, 90); INSERT INTO t (v) VALUES ('more')");
      const warn = (): void => {};

      let applier = Applier.fromSnapshot(replicaFile, stateFile, warn, start, { epoch: 1, txid: 10, checksum: startValue });
      assert.equal(applier.apply([tx11, tx12]).txid, 12);
      assert.equal(applier.isRecovering, false);
      applier.close();
      // The power loss: the file kept both transactions, the position file only txid 10.
      rmSync(stateFile);
      const stale = new PositionFile(stateFile);
      stale.write({ epoch: 1, txid: 10, checksum: startValue });
      stale.close();

      applier = Applier.open(replicaFile, stateFile, warn)!;
      assert.equal(applier.position.txid, 10);
      assert.equal(applier.isRecovering, true, 'the file is ahead of its position');
      const atTwelve = pages(replicaFile);
      // The master resends 11 and 12: 11 does not match the file's checksum (allowed while
      // recovering), 12 does, and from there on every transaction is verified again.
      assert.equal(applier.apply([tx11]).txid, 11);
      assert.equal(applier.isRecovering, true);
      assertSamePages(atTwelve, pages(replicaFile), 'replaying 11 only checks it: the file keeps its state, no older page comes back');
      assert.equal(applier.apply([tx12]).txid, 12);
      assert.equal(applier.isRecovering, false, 'the checksums agree again');
      assertSamePages(atTwelve, pages(replicaFile), 'and 12 is what the file already held');
      const tx13 = tx(13, "DELETE FROM t WHERE id < 50");
      const wrong = { ...tx13, checksum: startValue };
      assert.throws(() => applier.apply([wrong]), /checksum mismatch after txid 13/, 'verification is back on');
      applier.close();
      applier = Applier.open(replicaFile, stateFile, warn)!;
      assert.equal(applier.position.txid, 12);
      assert.equal(applier.isRecovering, false);
      assert.equal(applier.apply([tx13]).txid, 13);
      applier.close();
      assertSamePages(pages(masterFile), pages(replicaFile), 'after the replay');
      assert.equal(integrity(replicaFile), 'ok');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a batch is visible to readers at once, and durable (position file) only after makeDurable()', async () => {
    const { dir, replicaFile, stateFile, t, applier } = copyAtTenThen("UPDATE t SET v = 'visible' WHERE id = 5");
    try {
      const reader = new Database(replicaFile, { readonly: true, fileMustExist: true });
      try {
        assert.equal(applier.apply([decodeRecord(encodeTx(t.record)) as TxRecord]).txid, 11);
        assert.equal((reader.prepare('SELECT v FROM t WHERE id = 5').get() as { v: string }).v, 'visible', 'a reader sees the batch right after apply()');
        assert.equal(applier.durablePosition.txid, 10, 'not yet durable');
        const stored = (): number | undefined => {
          const f = new PositionFile(stateFile);
          try {
            return f.read()?.txid;
          } finally {
            f.close();
          }
        };
        assert.equal(stored(), 10, 'the position file still names the last durable position');
        assert.equal((await applier.makeDurable()).txid, 11);
        assert.equal(applier.durablePosition.txid, 11);
        assert.equal(stored(), 11, 'the position file follows the sync');
      } finally {
        reader.close();
        await applier.close();
      }
      assertSamePages(t.after, pages(replicaFile), 'the copy after close');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a clean close writes the position of everything applied, so the next start has nothing to replay', async () => {
    const copy = copyAtTenThen('DELETE FROM t WHERE id > 20');
    const { dir, replicaFile, stateFile, t } = copy;
    let applier = copy.applier;
    try {
      applier.apply([decodeRecord(encodeTx(t.record)) as TxRecord]);
      assert.equal(applier.durablePosition.txid, 10);
      await applier.close();
      applier = Applier.open(replicaFile, stateFile, () => {})!;
      try {
        assert.equal(applier.position.txid, 11);
        assert.equal(applier.isRecovering, false, 'position file and copy agree');
      } finally {
        await applier.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a copy started from a snapshot is at the snapshot’s position, not at the one in the state file it replaces', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-applier-'));
    try {
      const file = path.join(dir, 'replica.db');
      const stateFile = path.join(dir, 'replica.position');
      const db = openDatabase(file);
      db.exec('CREATE TABLE t (x)');
      db.pragma('wal_checkpoint(TRUNCATE)');
      db.close();
      const cs = checksumPages(4096, pages(file).map((data, i) => ({ pgno: i + 1, data })));
      // An older copy's state file, after a few batches (each one position write).
      const old = new PositionFile(stateFile);
      old.read();
      for (let txid = 1; txid <= 4; txid++) old.write({ epoch: 1, txid, checksum: '00000000000000aa' });
      old.close();
      const warn = (): void => {};
      const applier = Applier.fromSnapshot(file, stateFile, warn, cs, { epoch: 1, txid: 100, checksum: cs.value });
      const at = applier.position;
      applier.close();
      assert.deepEqual(at, { epoch: 1, txid: 100, checksum: cs.value }, 'the position after installing a snapshot');
      const reopened = Applier.open(file, stateFile, warn)!;
      const again = reopened.position;
      reopened.close();
      assert.deepEqual(again, { epoch: 1, txid: 100, checksum: cs.value }, 'the position after a restart');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('a replica and a master of another record format', () => {
  it('a master that names no format (an older release) is refused before any record: the copy keeps serving, no snapshot', async (t) => {
    const { dir, replicaFile, stateFile, startPages } = applierFiles(20);
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const start = checksumPages(4096, startPages.map((data, i) => ({ pgno: i + 1, data })));
    await Applier.fromSnapshot(replicaFile, stateFile, () => {}, start, { epoch: 1, txid: 10, checksum: start.value }).close();

    // Answers the stream as a master before record format 3 did: 200, no format header.
    const requests: string[] = [];
    const older = http.createServer((req, res) => {
      requests.push(req.url!.split('?')[0]!);
      if (req.url!.startsWith('/internal/v1/replication/stream')) {
        res.writeHead(200, { 'content-type': 'application/vnd.nebulagc.replication-stream' });
        res.write(Buffer.alloc(8));
        return;
      }
      res.writeHead(500).end();
    });
    await new Promise<void>((r) => older.listen(0, '127.0.0.1', r));
    t.after(() => {
      older.closeAllConnections();
      older.close();
    });
    const lines: string[] = [];
    const log = createLogger('warn', new Writable({ write: (chunk: Buffer, _e, cb) => void (lines.push(chunk.toString('utf8')), cb()) }));
    const client = new InternalClient({ baseUrl: `http://127.0.0.1:${(older.address() as AddressInfo).port}`, secret: REPLICATION_SECRET });
    let streamErrors = 0;
    const replica = new ReplicationReplica(
      new HttpUpstream(client),
      { dbPath: replicaFile, dir, replicaId: 'format-test', advertiseUrl: 'http://127.0.0.1:9', ...replicaIdentity(dir) },
      {
        onCopyChanged: () => {},
        onApplied: () => {},
        onHeartbeat: () => {},
        onStreamError: () => void streamErrors++,
        ...quietReplicaHooks,
      },
      log,
    );
    replica.start();
    try {
      assert.ok(await waitUntil(() => requests.filter((p) => p.endsWith('/stream')).length >= 3, 10_000), `three stream attempts: ${requests.join(' ')}`);
      assert.ok(streamErrors >= 2);
      assert.equal(requests.filter((p) => p.endsWith('/snapshot')).length, 0, 'no snapshot was asked for');
      assert.equal(replica.hasCopy, true, 'the copy is still served');
      assert.equal(replica.position?.txid, 10);
      assert.ok(lines.some((l) => /record format 2 or older.*run the same version on master and replicas/.test(l)), lines.join(''));
    } finally {
      await replica.stop();
      client.close();
    }
    assertSamePages(startPages, pages(replicaFile), 'the copy is untouched');
  });
});
