import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { openDatabase, type Db } from '../../server/src/db/connection.js';
import {
  diffDatabases,
  keepDivergedCopy,
  listQuarantine,
  quarantineDir,
  recordDiff,
  showQuarantine,
  type Change,
  type QuarantineMeta,
} from '../../server/src/ha/quarantine.js';

/**
 * An old master keeps its diverged database before resyncing, and records what differs from the
 * new master's copy. The diverged copy here gets created, deleted and updated rows in each kind
 * of table (integer, text, composite WITHOUT ROWID and undeclared keys, a BLOB), left in the WAL
 * of an open connection when it is kept, as they would be on a node that was just demoted.
 */

const MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../server/src/cli/main.js');
const NEW_TENANT = 't-new-aaaaaaaaaaaa';

let dir: string;
let divergedPath: string;
let currentPath: string;
let diverged: Db;
let kept: QuarantineMeta;

const file = (name: string): string => path.join(dir, name);

function makeBase(): void {
  const db = openDatabase(file('base.db'));
  db.exec(`
    CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL);
    CREATE TABLE counters (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL, n INTEGER NOT NULL);
    CREATE TABLE memberships (tenant_id TEXT, user_id INTEGER, role TEXT NOT NULL, PRIMARY KEY (tenant_id, user_id)) WITHOUT ROWID;
    CREATE TABLE events (kind TEXT NOT NULL, detail TEXT);
    CREATE TABLE blobs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB NOT NULL);
    CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);
    INSERT INTO tenants VALUES ('t-keep', 'globex', 1), ('t-old', 'initech', 2), ('t-same', 'hooli', 3);
    INSERT INTO counters (label, n) VALUES ('first', 1), ('second', 2), ('third', 3);
    INSERT INTO memberships VALUES ('t1', 1, 'owner'), ('t1', 2, 'member'), ('t2', 1, 'member');
    INSERT INTO events (kind, detail) VALUES ('boot', 'cold start'), ('tick', NULL), ('tick', NULL);
  `);
  db.prepare('INSERT INTO blobs VALUES (?, ?, ?)').run(1, 'logo', Buffer.alloc(64, 1));
  db.prepare('INSERT INTO blobs VALUES (?, ?, ?)').run(2, 'icon', Buffer.alloc(32, 2));
  db.close();
}

/** The fork: the new master added a table the old one never saw; the old one wrote on its own. */
function fork(): void {
  copyFileSync(file('base.db'), currentPath);
  copyFileSync(file('base.db'), divergedPath);
  const current = openDatabase(currentPath);
  current.exec(`CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT NOT NULL); INSERT INTO audit VALUES (1, 'rotated ca');`);
  current.exec('INSERT INTO _litestream_seq VALUES (1, 100)');
  current.close();

  diverged = openDatabase(divergedPath);
  diverged.pragma('wal_autocheckpoint = 0');
  diverged.exec(`
    INSERT INTO tenants VALUES ('${NEW_TENANT}', 'acme', 4);
    DELETE FROM tenants WHERE id = 't-old';
    UPDATE tenants SET name = 'globex-renamed' WHERE id = 't-keep';
    UPDATE counters SET n = 20 WHERE id = 2;
    INSERT INTO counters (label, n) VALUES ('fourth', 4);
    INSERT INTO memberships VALUES ('t1', 9, 'admin');
    UPDATE memberships SET role = 'viewer' WHERE tenant_id = 't1' AND user_id = 2;
    DELETE FROM memberships WHERE tenant_id = 't2' AND user_id = 1;
    DELETE FROM events WHERE rowid = 1;
    INSERT INTO events (kind, detail) VALUES ('login', 'from cli');
    CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
    INSERT INTO notes VALUES (1, 'first note'), (2, 'second note');
    INSERT INTO _litestream_seq VALUES (1, 7);
  `);
  diverged.prepare('UPDATE blobs SET payload = ? WHERE id = 1').run(Buffer.alloc(64, 9));
}

const EXPECTED: [string, Change['change'], Record<string, unknown>][] = [
  ['audit', 'deleted', { id: 1 }],
  ['blobs', 'updated', { id: 1 }],
  ['counters', 'updated', { id: 2 }],
  ['counters', 'created', { id: 4 }],
  ['events', 'created', { rowid: 4 }],
  ['events', 'deleted', { rowid: 1 }],
  ['memberships', 'updated', { tenant_id: 't1', user_id: 2 }],
  ['memberships', 'created', { tenant_id: 't1', user_id: 9 }],
  ['memberships', 'deleted', { tenant_id: 't2', user_id: 1 }],
  ['notes', 'created', { id: 1 }],
  ['notes', 'created', { id: 2 }],
  ['tenants', 'updated', { id: 't-keep' }],
  ['tenants', 'created', { id: NEW_TENANT }],
  ['tenants', 'deleted', { id: 't-old' }],
];

function assertExpected(changes: Change[]): void {
  assert.deepEqual(
    changes.map((c) => [c.table, c.change, c.key]),
    EXPECTED,
  );
  const by = (table: string, kind: string): Change => changes.find((c) => c.table === table && c.change === kind)!;
  assert.equal(by('tenants', 'created').summary, 'tenants id=t-new-aa… created: name="acme"');
  assert.equal(by('tenants', 'deleted').summary, 'tenants id=t-old deleted: name="initech"');
  assert.equal(by('tenants', 'updated').summary, 'tenants id=t-keep updated: name="globex-renamed"; differs in name');
  assert.equal(by('counters', 'updated').summary, 'counters id=2 updated: label="second"; differs in n');
  assert.equal(by('memberships', 'created').summary, 'memberships tenant_id=t1,user_id=9 created: role="admin"');
  assert.equal(by('events', 'deleted').summary, 'events rowid=1 deleted: kind="boot"');
  assert.equal(by('audit', 'deleted').summary, 'audit id=1 deleted: what="rotated ca"');
  assert.equal(by('blobs', 'updated').summary, 'blobs id=1 updated: name="logo"; differs in payload');

  const tenant = by('tenants', 'updated');
  assert.deepEqual(tenant.diverged, { id: 't-keep', name: 'globex-renamed', created_at: 1 });
  assert.deepEqual(tenant.current, { id: 't-keep', name: 'globex', created_at: 1 });
  assert.equal(by('tenants', 'created').current, undefined);
  assert.equal(by('tenants', 'deleted').diverged, undefined);
  const blob = by('blobs', 'updated');
  assert.deepEqual(blob.diverged?.payload, { blob_bytes: 64, sha256: sha(Buffer.alloc(64, 9)) });
  assert.deepEqual(blob.current?.payload, { blob_bytes: 64, sha256: sha(Buffer.alloc(64, 1)) });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-quarantine-'));
  divergedPath = file('nebulagc.db');
  currentPath = file('master.db');
  makeBase();
  fork();
});
after(() => {
  diverged?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('quarantine', () => {
  it('keeps the whole diverged database, WAL included, in a private folder', async () => {
    assert.ok(statSync(`${divergedPath}-wal`).size > 0, 'the diverged writes are still in the WAL');
    kept = await keepDivergedCopy({
      dbPath: divergedPath,
      position: { epoch: 3, txid: 42, checksum: '00112233aabbccdd' },
      forkTxid: 37,
      masterUrl: 'https://ha-b:8443',
      masterEpoch: 4,
    });
    assert.match(kept.id, /^q-\d{8}T\d{6}Z-42$/);
    assert.equal(kept.db_path, divergedPath);
    assert.equal(kept.fork_txid, 37);
    assert.equal(kept.diverged_transactions, 5);
    assert.equal(kept.master_url, 'https://ha-b:8443');
    assert.equal(kept.master_epoch, 4);
    assert.equal(kept.changes, null);

    const entry = path.join(quarantineDir(divergedPath), kept.id);
    assert.deepEqual(readdirSync(entry).sort(), ['meta.json', 'nebulagc.db']);
    assert.equal(statSync(path.join(entry, 'meta.json')).mode & 0o777, 0o600);
    assert.equal(statSync(path.join(entry, 'nebulagc.db')).mode & 0o777, 0o600);
    assert.deepEqual(JSON.parse(readFileSync(path.join(entry, 'meta.json'), 'utf8')), kept);

    const copy = openDatabase(path.join(entry, 'nebulagc.db'), { readonly: true });
    try {
      assert.equal(copy.prepare('SELECT name FROM tenants WHERE id = ?').pluck().get(NEW_TENANT), 'acme');
      assert.equal(copy.prepare('SELECT count(*) FROM notes').pluck().get(), 2);
      assert.equal(copy.pragma('integrity_check', { simple: true }), 'ok');
    } finally {
      copy.close();
    }
    // A single self-contained file: reading it left no -wal or -shm behind.
    assert.deepEqual(readdirSync(entry).sort(), ['meta.json', 'nebulagc.db']);
  });

  it('a second copy at the same position gets an id of its own', async () => {
    const again = await keepDivergedCopy({ dbPath: divergedPath, position: kept.position, forkTxid: undefined, masterUrl: undefined, masterEpoch: undefined });
    assert.notEqual(again.id, kept.id);
    assert.equal(again.diverged_transactions, null);
    assert.equal(again.master_url, null);
    assert.deepEqual(
      listQuarantine(divergedPath).map((m) => m.id),
      [again.id, kept.id],
    );
    rmSync(path.join(quarantineDir(divergedPath), again.id), { recursive: true });
  });

  it('diffDatabases reports exactly the created, deleted and updated rows, by key', async () => {
    const changes = diffDatabases(divergedPath, currentPath);
    assertExpected(changes);
    assert.deepEqual(diffDatabases(currentPath, currentPath), []);
  });

  it('recordDiff, after the resync installed the master’s copy, writes diff.json and the count', () => {
    diverged.close();
    for (const suffix of ['', '-wal', '-shm']) rmSync(`${divergedPath}${suffix}`, { force: true });
    copyFileSync(currentPath, divergedPath);

    // A diff that cannot be made must not stop the resync: it is noted and the entry stays.
    const failed = recordDiff(divergedPath, kept.id, file('missing.db'));
    assert.equal(failed.changes, null);
    assert.match(failed.diff_error ?? '', /no database at .*missing\.db/);

    const meta = recordDiff(divergedPath, kept.id, divergedPath);
    assert.equal(meta.changes, EXPECTED.length);
    assert.equal(meta.diff_error, undefined);
    const entry = path.join(quarantineDir(divergedPath), kept.id);
    assertExpected(JSON.parse(readFileSync(path.join(entry, 'diff.json'), 'utf8')) as Change[]);
    assert.equal(statSync(path.join(entry, 'diff.json')).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(entry).sort(), ['diff.json', 'meta.json', 'nebulagc.db']);
    kept = meta;
  });

  it('listQuarantine and showQuarantine return the entry; an absent folder lists nothing', () => {
    assert.deepEqual(listQuarantine(divergedPath), [kept]);
    assert.deepEqual(listQuarantine(file('never-quarantined.db')), []);
    const shown = showQuarantine(divergedPath, kept.id);
    assert.deepEqual(shown.meta, kept);
    assertExpected(shown.changes);
  });

  it('show refuses an id that climbs out of the folder, and names the folder for an unknown one', () => {
    assert.throws(() => showQuarantine(divergedPath, '../x'), /invalid quarantine id "\.\.\/x"/);
    assert.throws(() => showQuarantine(divergedPath, '..'), /invalid quarantine id/);
    assert.throws(
      () => showQuarantine(divergedPath, 'q-19700101T000000Z-1'),
      (err: Error) => err.message.includes('"q-19700101T000000Z-1"') && err.message.includes(quarantineDir(divergedPath)),
    );
  });

  it('the CLI lists and shows the entries as JSON, and fails in one line on a bad id', () => {
    const list = cli(['list']);
    assert.equal(list.status, 0, list.stderr);
    assert.deepEqual(JSON.parse(list.stdout), { entries: [kept] });

    const show = cli(['show', kept.id]);
    assert.equal(show.status, 0, show.stderr);
    assert.ok(show.stdout.includes('name=\\"acme\\"'), show.stdout);
    const shown = JSON.parse(show.stdout) as { meta: QuarantineMeta; changes: Change[] };
    assert.deepEqual(shown.meta, kept);
    assertExpected(shown.changes);

    const bad = cli(['show', '../x']);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^nebulagc-server: error: invalid quarantine id/);
  });
});

/** The CLI on the test's database, with none of this process's NEBULAGC_* settings. */
function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const r = spawnSync(process.execPath, [MAIN, 'quarantine', ...args, '--db', divergedPath], { env, encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
