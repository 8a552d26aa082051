import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { describe, it } from 'node:test';
import { openDatabase } from '../../../server/src/db/connection.js';
import { BackgroundCheckpointer } from '../../../server/src/replication/background-checkpointer.js';
import { openMaster, testDir } from './fixtures.js';

describe('BackgroundCheckpointer', () => {
  it('copies WAL frames on its thread, never past a reader’s snapshot, and refuses work once closed', async (t) => {
    const tmp = testDir(t, 'bgckpt');
    const file = tmp.file('db.sqlite');
    const writer = openMaster(file);
    writer.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    const insert = writer.prepare('INSERT INTO t (v) VALUES (?)');
    for (let i = 0; i < 50; i++) insert.run(`before ${i} ${'x'.repeat(500)}`);
    // A pin, as the master's capture holds one: a read transaction at the WAL's current end.
    const pin = openDatabase(file, { readonly: true });
    pin.exec('BEGIN');
    pin.prepare('SELECT count(*) FROM t').get();
    const pinnedFrames = (writer.pragma('wal_checkpoint(PASSIVE)') as { log: number }[])[0]!.log;
    // That checkpoint (on this thread) copied everything so far; write more past the pin.
    for (let i = 0; i < 50; i++) insert.run(`after ${i} ${'y'.repeat(500)}`);
    const dbSizeBefore = statSync(file).size;

    const bg = new BackgroundCheckpointer(file, 'NORMAL');
    const first = bg.passive();
    assert.equal(bg.running, true);
    await assert.rejects(bg.passive(), /already running/, 'one at a time');
    const r = await first;
    assert.equal(bg.running, false);
    assert.ok(r.log > pinnedFrames, `the WAL has frames past the pin (${r.log} > ${pinnedFrames})`);
    assert.equal(r.checkpointed, pinnedFrames, 'nothing past the reader’s snapshot was copied');

    pin.exec('COMMIT');
    pin.close();
    const all = await bg.passive();
    assert.equal(all.checkpointed, all.log, 'without the pin, everything is copied');
    assert.ok(statSync(file).size > dbSizeBefore, 'into the database file');
    assert.equal((writer.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n, 100);

    await bg.close();
    await assert.rejects(bg.passive(), /closed/);
    writer.close();
    const check = openDatabase(file, { readonly: true });
    assert.equal(check.pragma('integrity_check', { simple: true }), 'ok');
    check.close();
  });
});
