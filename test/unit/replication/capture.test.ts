import assert from 'node:assert/strict';
import { copyFileSync, existsSync, statSync } from 'node:fs';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { openDatabase, type Db } from '../../../server/src/db/connection.js';
import { txPages, WalCapture, type CapturedTx } from '../../../server/src/replication/master/capture.js';
import { checksumPages, DbChecksum } from '../../../server/src/replication/wire/checksum.js';
import { integrityOf, openMaster, pagesOf, randomBytes, rng, tempDir, type TempDir } from './fixtures.js';

/**
 * A master with a WalCapture, and a replica file that starts as a copy of the master and
 * receives every captured transaction through sqlite_dbpage (DESIGN §3).
 */
class Harness {
  readonly tmp: TempDir;
  readonly master: string;
  readonly replicaFile: string;
  readonly writer: Db;
  readonly pins: [Db, Db];
  readonly capture: WalCapture;
  readonly applier: Db;
  /** Every transaction captured so far, in order. */
  readonly log: CapturedTx[] = [];
  private others: Db[] = [];

  constructor(prefix: string, setup: (db: Db) => void = () => {}, resumeFrom?: WalCapture['position']) {
    this.tmp = tempDir(prefix);
    this.master = this.tmp.file('master.db');
    this.replicaFile = this.tmp.file('replica.db');
    this.writer = openMaster(this.master);
    setup(this.writer);
    const [r] = this.writer.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
    assert.equal(r!.busy, 0);
    copyFileSync(this.master, this.replicaFile);
    this.pins = [openDatabase(this.master, { readonly: true }), openDatabase(this.master, { readonly: true })];
    this.capture = new WalCapture(this.writer, { dbPath: this.master, pins: this.pins, epoch: 1, resumeFrom });
    this.applier = openDatabase(this.replicaFile);
    this.applier.unsafeMode(true);
    this.mirror = checksumPages(4096, pagesOf(this.replicaFile).map((data, i) => ({ pgno: i + 1, data })));
    assert.equal(this.mirror.value, this.capture.position.checksum, 'the capture starts from the checksum of the copied file');
  }

  /** The checksum of the replica as the applied pages make it: start + every tx's pages. */
  readonly mirror: DbChecksum;

  /** Another connection on the master, as another process would have. */
  other(): Db {
    const db = openMaster(this.master);
    this.others.push(db);
    return db;
  }

  /** Captures (or refreshes or releases the pins), then checks and applies what came back. */
  pump(how: 'capture' | 'refreshPin' | 'releasePins' = 'capture'): CapturedTx[] {
    const txs = this.capture[how]();
    this.take(txs);
    return txs;
  }

  /** Checks each transaction's shape, applies it to the replica and logs it. */
  take(txs: CapturedTx[]): void {
    for (const tx of txs) {
      const prev = this.log[this.log.length - 1];
      assert.equal(tx.txid, (prev?.txid ?? 0) + 1, 'txids count up by one');
      assert.equal(tx.epoch, 1);
      assert.equal(tx.pageSize, 4096);
      const pgnos = tx.pages.map((p) => p.pgno);
      assert.equal(new Set(pgnos).size, pgnos.length, 'each page once');
      if (pgnos.includes(1)) assert.equal(pgnos[pgnos.length - 1], 1, 'page 1 last');
      for (const p of tx.pages) assert.equal(p.data.length, 4096);
      // The checksum a tx carries is that of the previous state plus its pages.
      for (const p of tx.pages) this.mirror.setPage(p.pgno, p.data);
      this.mirror.resize(tx.dbSize);
      assert.equal(tx.checksum, this.mirror.value, `checksum carried by txid ${tx.txid}`);
      this.apply(tx);
      this.log.push(tx);
    }
  }

  /** One statement per transaction: the pages as given (page 1 last), then (dbSize+1, NULL). */
  apply(tx: CapturedTx): void {
    const values: (number | Buffer | null)[] = [];
    for (const p of tx.pages) values.push(p.pgno, p.data);
    values.push(tx.dbSize + 1, null);
    const sql = `INSERT INTO sqlite_dbpage(pgno, data) VALUES ${Array.from({ length: tx.pages.length + 1 }, () => '(?,?)').join(',')}`;
    this.applier.transaction(() => this.applier.prepare(sql).run(...values)).immediate();
  }

  /** The replica equals the master page for page, and both are sound. */
  assertIdentical(): void {
    const m = pagesOf(this.master);
    const r = pagesOf(this.replicaFile);
    assert.equal(r.length, m.length, 'page count');
    // Page 1's change counter fields are stamped by SQLite itself on every commit that writes
    // page 1, from the committing connection's own state, so they are compared apart (see the
    // test 'a replica file has the checksum its last record carries').
    m.forEach((page, i) => assert.ok(maskHeader(i + 1, page).equals(maskHeader(i + 1, r[i]!)), `page ${i + 1} differs`));
    assert.equal(this.mirror.value, this.capture.position.checksum, 'the applied pages add up to the capture position');
    assert.equal(integrityOf(this.replicaFile), 'ok');
    assert.equal(integrityOf(this.master), 'ok');
    const fromScratch = checksumPages(4096, m.map((data, i) => ({ pgno: i + 1, data }))).value;
    assert.equal(this.capture.position.checksum, fromScratch, 'capture checksum = from-scratch checksum of the master');
  }

  walBytes(): number {
    const wal = `${this.master}-wal`;
    return existsSync(wal) ? statSync(wal).size : 0;
  }

  private captureClosed = false;

  closeCapture(): void {
    if (!this.captureClosed) this.capture.close();
    this.captureClosed = true;
  }

  close(): void {
    this.closeCapture();
    for (const db of [...this.others, this.applier, ...this.pins, this.writer]) db.close();
    this.tmp.remove();
  }
}

/** Page 1 with the fields SQLite rewrites on each commit zeroed: change counter, version-valid-for, version. */
function maskHeader(pgno: number, page: Buffer): Buffer {
  if (pgno !== 1) return page;
  const copy = Buffer.from(page);
  copy.fill(0, 24, 28);
  copy.fill(0, 92, 100);
  return copy;
}

const setupTable = (db: Db): void => {
  db.exec('CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)');
  db.exec("INSERT INTO kv (v) VALUES ('seed')");
};

describe('txPages', () => {
  const frame = (pgno: number, fill: number) => ({ pgno, commitSize: 0, data: Buffer.alloc(8, fill), hashA: fill, hashB: pgno });
  for (const n of [4, 40]) {
    it(`a page written twice in one transaction (${n} frames) goes out once, as its last image, and page 1 goes last`, () => {
      const frames = [frame(3, 1), frame(1, 2), frame(3, 3), frame(5, 4)];
      // Padding up to n frames takes the other path (a Map) past 32.
      for (let i = 0; frames.length < n; i++) frames.splice(1, 0, frame(100 + i, 9));
      for (const copy of [false, true]) {
        const pages = txPages(frames, copy);
        assert.equal(pages.length, n - 1);
        assert.equal(pages[pages.length - 1]!.pgno, 1, 'page 1 last');
        const three = pages.filter((p) => p.pgno === 3);
        assert.equal(three.length, 1);
        assert.equal(three[0]!.data[0], 3, 'the last image of page 3');
        assert.equal(three[0]!.hashA, 3, 'with its own hash');
        if (copy) assert.notEqual(three[0]!.data.buffer, frames[2]!.data.buffer, 'copied out of the read buffer');
      }
    });
  }
});

describe('WalCapture', () => {
  let h: Harness | undefined;
  beforeEach(() => {
    h = undefined;
  });
  afterEach(() => {
    h?.close();
  });

  it('captures one tx per commit and the replica reproduces the master through a mixed workload', () => {
    h = new Harness('cap-workload');
    const w = h.writer;
    const next = rng(21);
    let commits = 0;
    const run = (sql: string, ...args: unknown[]): void => {
      w.prepare(sql).run(...args);
      commits++;
    };
    assert.deepEqual(h.pump(), [], 'nothing to capture before any write');

    run('CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT, body BLOB)');
    run('CREATE INDEX a_name ON a (name)');
    assert.equal(h.pump().length, 2);
    for (let i = 0; i < 20; i++) run('INSERT INTO a (name, body) VALUES (?, ?)', `n${i}`, randomBytes(500, next));
    assert.equal(h.pump().length, 20, 'several commits in one capture come back as several txs');
    h.assertIdentical();

    // One transaction of many pages (over the default page cache, so it spills mid-transaction).
    run('INSERT INTO a (name, body) VALUES (?, ?)', 'big', randomBytes(4 * 1024 * 1024 + 123, next));
    const [big] = h.pump();
    assert.ok(big && big.pages.length > 1000, `big tx has ${big?.pages.length} pages`);
    assert.equal(big.resync, false);

    run('CREATE TABLE b (x)');
    w.transaction(() => {
      for (let i = 0; i < 300; i++) w.prepare('INSERT INTO b (x) VALUES (?)').run(randomBytes(100, next));
    })();
    commits++;
    run('DELETE FROM a WHERE id % 2 = 0');
    assert.equal(h.pump().length, 3);
    run("DELETE FROM a WHERE name = 'big'");
    run('DROP TABLE b');
    run('DROP INDEX a_name');
    assert.equal(h.pump().length, 3);
    h.assertIdentical();

    const before = h.log.length;
    w.exec('VACUUM');
    const vac = h.pump();
    assert.ok(vac.length >= 1, 'VACUUM is captured');
    assert.ok(vac[vac.length - 1]!.dbSize < h.log[before - 1]!.dbSize, 'VACUUM shrank the database');
    run('CREATE TABLE c (y)');
    run("INSERT INTO c VALUES ('after vacuum')");
    h.pump();
    h.assertIdentical();

    assert.equal(h.log.length, commits + vac.length);
    assert.ok(h.log.every((t) => !t.resync));
    assert.equal(h.capture.position.txid, h.log.length);
    assert.equal(h.capture.position.epoch, 1);
  });

  it('a replica file has the checksum its last record carries, and equals the master byte for byte', () => {
    // DESIGN §4: every record carries the database checksum "so a replica can prove it is
    // identical". That needs the replica's own file to hash to the record's checksum.
    h = new Harness('cap-strict', setupTable);
    const other = h.other();
    h.writer.prepare('INSERT INTO kv (v) VALUES (?)').run('small'); // a tx that does not write page 1
    other.prepare('INSERT INTO kv (v) VALUES (?)').run('x'.repeat(5000)); // grows: writes page 1
    h.writer.prepare('INSERT INTO kv (v) VALUES (?)').run('y'.repeat(5000));
    other.prepare('INSERT INTO kv (v) VALUES (?)').run('z'.repeat(5000));
    const txs = h.pump();
    assert.equal(txs.length, 4);
    assert.ok(!txs[0]!.pages.some((p) => p.pgno === 1));
    h.assertIdentical(); // identical apart from page 1's change counter fields
    const m = pagesOf(h.master);
    const r = pagesOf(h.replicaFile);
    const diffs: string[] = [];
    m.forEach((page, i) => {
      for (let b = 0; b < page.length; b++) if (page[b] !== r[i]![b]) diffs.push(`page ${i + 1} byte ${b}: master ${page[b]} replica ${r[i]![b]}`);
    });
    // SQLite itself stamps page 1's change counter (bytes 24..27), version-valid-for (92..95)
    // and version (96..99) on each commit that writes page 1, from the committing connection's
    // own state; and the truncation row makes every applied tx write page 1. Those bytes may
    // differ; nothing else may.
    const stamped = (d: string): boolean => /^page 1 byte (2[4-7]|9[2-9]):/.test(d);
    assert.deepEqual(diffs.filter((d) => !stamped(d)), [], 'replica differs from the master');
    const replicaChecksum = checksumPages(4096, r.map((data, i) => ({ pgno: i + 1, data }))).value;
    assert.equal(
      replicaChecksum,
      txs[txs.length - 1]!.checksum,
      `the replica file's checksum is the one its last record carries (replica differs from master in: ${diffs.join('; ') || 'nothing'})`,
    );
  });

  it('captures writes made by another connection on the same file', () => {
    h = new Harness('cap-other', setupTable);
    const other = h.other();
    other.prepare('INSERT INTO kv (v) VALUES (?)').run('from the other connection');
    other.exec('CREATE TABLE other_t (z)');
    h.writer.prepare('INSERT INTO kv (v) VALUES (?)').run('from the writer');
    const txs = h.pump();
    assert.equal(txs.length, 3);
    assert.ok(txs.every((t) => !t.resync));
    h.assertIdentical();
    const replica = openDatabase(h.replicaFile, { readonly: true });
    try {
      assert.deepEqual(
        replica.prepare('SELECT v FROM kv ORDER BY k').pluck().all(),
        ['seed', 'from the other connection', 'from the writer'],
      );
    } finally {
      replica.close();
    }
  });

  it('the pins keep another connection\'s TRUNCATE checkpoint from discarding uncaptured frames', () => {
    h = new Harness('cap-pinned', setupTable);
    const other = h.other();
    other.pragma('busy_timeout = 0'); // a busy checkpoint should answer at once, not wait 5 s
    for (let i = 0; i < 3; i++) other.prepare('INSERT INTO kv (v) VALUES (?)').run(`o${i}`);
    const walBefore = h.walBytes();
    assert.ok(walBefore > 32);

    const [first] = other.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
    assert.equal(first!.busy, 1, 'the pin makes the truncating checkpoint busy');
    assert.equal(h.walBytes(), walBefore, 'the WAL keeps its frames');

    const txs = h.pump();
    assert.equal(txs.length, 3, 'the frames are still there to capture');
    assert.ok(txs.every((t) => !t.resync));
    h.assertIdentical();

    // Once everything is captured, refreshing the pin lets the checkpoint through.
    let attempts = 0;
    let busy = 1;
    while (busy !== 0 && attempts < 5) {
      h.pump('refreshPin');
      busy = (other.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[])[0]!.busy;
      attempts++;
    }
    assert.equal(busy, 0, `checkpoint still busy after ${attempts} refreshes`);
    assert.equal(h.walBytes(), 0, 'the WAL was truncated');

    other.prepare('INSERT INTO kv (v) VALUES (?)').run('after truncate');
    h.writer.prepare('INSERT INTO kv (v) VALUES (?)').run('writer after truncate');
    const after = h.pump();
    assert.equal(after.length, 2);
    assert.ok(after.every((t) => !t.resync), 'a restart seen while pinned needs no resync');
    h.assertIdentical();
  });

  it('checkpoint() restarts the WAL in place, and later writes keep being captured', () => {
    h = new Harness('cap-ckpt', setupTable);
    const ins = h.writer.prepare('INSERT INTO kv (v) VALUES (?)');
    for (let i = 0; i < 5; i++) ins.run(`a${i}`);
    const { captured, complete } = h.capture.checkpoint();
    assert.equal(captured.length, 5, 'checkpoint() captures before it checkpoints');
    h.take(captured);
    assert.equal(complete, true, 'nothing else wrote: the checkpoint saw exactly the captured frames');
    const walAfterCheckpoint = h.walBytes();
    assert.ok(walAfterCheckpoint > 32, 'the file is kept for reuse, not truncated');

    for (let i = 0; i < 4; i++) ins.run(`b${i}`);
    const txs = h.pump();
    assert.equal(txs.length, 4, 'one tx per commit after our own checkpoint');
    assert.ok(txs.every((t) => !t.resync), 'our own complete checkpoint needs no resync');
    assert.equal(h.walBytes(), walAfterCheckpoint, 'fewer frames than before went to the start of the same file');
    h.assertIdentical();
  });

  it('transactions captured together carry the commit times noted for them, in order', () => {
    h = new Harness('cap-times', setupTable);
    const ins = h.writer.prepare('INSERT INTO kv (v) VALUES (?)');
    for (const t of [1000.25, 1001.5, 1002.75]) {
      ins.run(`t${t}`);
      h.capture.noteCommit(t);
    }
    const txs = h.pump();
    assert.deepEqual(
      txs.map((t) => t.commitTimeMs),
      [1000.25, 1001.5, 1002.75],
    );
    // A commit nobody noted (another process's) is stamped when it is captured.
    h.other().prepare('INSERT INTO kv (v) VALUES (?)').run('foreign');
    const [foreign] = h.pump();
    assert.ok(foreign && foreign.commitTimeMs > 1e12, 'stamped with the clock at capture');
  });

  it('frames of the old generation left past the end of a restarted WAL are never captured again', () => {
    h = new Harness('cap-stale-tail', setupTable);
    const ins = h.writer.prepare('INSERT INTO kv (v) VALUES (?)');
    for (let i = 0; i < 20; i++) ins.run(`old${i}`);
    h.take(h.capture.checkpoint().captured);
    // The new generation is shorter than the old one: the rest of the file is stale frames.
    ins.run('new0');
    assert.equal(h.pump().length, 1);
    for (let round = 0; round < 3; round++) assert.deepEqual(h.pump(), [], 'nothing new: the stale tail yields nothing');
    ins.run('new1');
    ins.run('new2');
    assert.equal(h.pump().length, 2);
    h.assertIdentical();
  });

  it('checkpoint() keeps the replica identical even when it resyncs', () => {
    // The same flow as above without asserting how it was captured: only that nothing is lost.
    h = new Harness('cap-ckpt2', setupTable);
    const ins = h.writer.prepare('INSERT INTO kv (v) VALUES (?)');
    let walAfterFirst = 0;
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 3; i++) ins.run(`r${round}-${i}`);
      h.take(h.capture.checkpoint().captured);
      walAfterFirst ||= h.walBytes();
      assert.equal(h.walBytes(), walAfterFirst, 'each round reuses the file from its start');
    }
    ins.run('last');
    h.pump();
    h.assertIdentical();
    const rows = openDatabase(h.replicaFile, { readonly: true });
    try {
      assert.equal(rows.prepare('SELECT count(*) FROM kv').pluck().get(), 11);
    } finally {
      rows.close();
    }
  });

  it('two checkpoint() calls in a row, then writes: still captured one tx per commit', () => {
    h = new Harness('cap-ckpt3', setupTable);
    const ins = h.writer.prepare('INSERT INTO kv (v) VALUES (?)');
    ins.run('x');
    h.take(h.capture.checkpoint().captured);
    const second = h.capture.checkpoint();
    assert.deepEqual(second.captured, []);
    ins.run('y');
    ins.run('z');
    const txs = h.pump();
    assert.equal(txs.length, 2);
    assert.ok(txs.every((t) => !t.resync), 'no resync after our own checkpoints');
    h.assertIdentical();
  });

  it('after releasePins(), writes without a checkpoint are captured normally', () => {
    h = new Harness('cap-release', setupTable);
    h.writer.prepare('INSERT INTO kv (v) VALUES (?)').run('before');
    assert.equal(h.pump('releasePins').length, 1);
    assert.ok(h.pins.every((p) => !p.inTransaction), 'both pins released');
    const other = h.other();
    other.prepare('INSERT INTO kv (v) VALUES (?)').run('while released');
    const txs = h.pump();
    assert.equal(txs.length, 1);
    assert.equal(txs[0]!.resync, false);
    assert.ok(h.pins.some((p) => p.inTransaction), 'capture() pinned again');
    h.assertIdentical();
  });

  it('after releasePins(), frames lost to another connection\'s TRUNCATE are recovered by a resync', () => {
    h = new Harness('cap-resync', (db) => {
      setupTable(db);
      db.exec('CREATE TABLE doomed (x)');
      db.exec("INSERT INTO doomed VALUES ('x')");
    });
    const ins = h.writer.prepare('INSERT INTO kv (v) VALUES (?)');
    ins.run('captured');
    h.pump('releasePins');
    const other = h.other();
    other.prepare('INSERT INTO kv (v) VALUES (?)').run('lost 1');
    other.exec('DROP TABLE doomed');
    other.prepare('INSERT INTO kv (v) VALUES (?)').run(randomBytes(20_000, rng(5)).toString('hex')); // grows the db
    const [r] = other.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
    assert.equal(r!.busy, 0, 'no pin held: the checkpoint goes through');
    assert.equal(h.walBytes(), 0, 'those frames are gone from the WAL');
    other.prepare('INSERT INTO kv (v) VALUES (?)').run('after the restart');

    const txs = h.pump();
    assert.equal(txs.length, 1, 'the lost changes come back as one transaction');
    assert.equal(txs[0]!.resync, true);
    h.assertIdentical();

    // And normal capture resumes afterwards.
    ins.run('normal again');
    const later = h.pump();
    assert.equal(later.length, 1);
    assert.equal(later[0]!.resync, false);
    h.assertIdentical();
  });

  it('after releasePins(), a checkpoint and a VACUUM that shrinks the file are recovered', () => {
    h = new Harness('cap-resync-shrink', (db) => {
      db.exec('CREATE TABLE big (b BLOB)');
      db.prepare('INSERT INTO big VALUES (?)').run(randomBytes(400_000, rng(6)));
      db.exec('CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)');
    });
    h.pump('releasePins');
    const other = h.other();
    other.exec('DELETE FROM big');
    other.exec('VACUUM');
    other.pragma('wal_checkpoint(TRUNCATE)');
    other.prepare('INSERT INTO kv (v) VALUES (?)').run('after');
    const txs = h.pump();
    assert.equal(txs.length, 1);
    assert.equal(txs[0]!.resync, true);
    assert.ok(txs[0]!.dbSize < 50, `database shrank to ${txs[0]!.dbSize} pages`);
    h.assertIdentical();
  });

  it('resumeFrom: a matching checksum continues the history; a wrong one is bridged from the WAL, or breaks it without one', () => {
    // Find the checksum of a database state with a throwaway capture.
    h = new Harness('cap-resume', setupTable);
    const right = h.capture.position.checksum;
    assert.equal(h.capture.historyBroken, false, 'no resumeFrom: nothing to break');
    h.closeCapture();
    const mk = (checksum: string): WalCapture =>
      new WalCapture(h!.writer, { dbPath: h!.master, pins: h!.pins, epoch: 2, resumeFrom: { epoch: 1, txid: 41, checksum } });

    const good = mk(right);
    assert.equal(good.historyBroken, false);
    assert.deepEqual(good.position, { epoch: 2, txid: 41, checksum: right });
    h.writer.prepare('INSERT INTO kv (v) VALUES (?)').run('next');
    const [tx] = good.capture();
    assert.equal(tx!.txid, 42, 'txids continue from the resumed position');
    good.close();

    const wrong = right.slice(0, 15) + (right[15] === '0' ? '1' : '0');
    // The database is ahead of the log and its WAL holds the changes: one bridging transaction.
    const ahead = mk(wrong);
    assert.equal(ahead.historyBroken, false);
    assert.ok(ahead.recovery, 'a recovery transaction from the WAL pages');
    assert.equal(ahead.recovery.txid, 42);
    assert.equal(ahead.recovery.checksum, ahead.position.checksum);
    assert.ok(ahead.recovery.pages.length > 0);
    ahead.close();

    // With the WAL checkpointed away there is nothing to bridge with: the history breaks.
    h.writer.pragma('wal_checkpoint(TRUNCATE)');
    const bad = mk(wrong);
    assert.equal(bad.historyBroken, true);
    assert.equal(bad.recovery, undefined);
    bad.close();
  });
});
