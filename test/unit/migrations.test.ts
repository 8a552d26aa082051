import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openDatabase, type Db } from '../../server/src/db/connection.js';
import { LATEST_SCHEMA_VERSION, migrate, MigrationError, migrations } from '../../server/src/db/migrations.js';

let dir: string;
let n = 0;
const freshPath = (): string => path.join(dir, `m${++n}.db`);

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-migrations-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function withDb<T>(file: string, fn: (db: Db) => T): T {
  const db = openDatabase(file, { synchronous: 'NORMAL' });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

const names = (db: Db, type: string): string[] =>
  (db.prepare('SELECT name FROM sqlite_master WHERE type = ? ORDER BY name').all(type) as { name: string }[]).map((r) => r.name);

/** The columns of every UNIQUE index of a table, as comma-joined strings. */
function uniqueIndexColumns(db: Db, table: string): string[] {
  const list = db.pragma(`index_list(${table})`) as { name: string; unique: number }[];
  return list
    .filter((i) => i.unique === 1)
    .map((i) => (db.pragma(`index_info(${JSON.stringify(i.name)})`) as { name: string }[]).map((c) => c.name).join(','));
}

describe('migrate', () => {
  it('brings a fresh file to LATEST_SCHEMA_VERSION with every table and index', () => {
    withDb(freshPath(), (db) => {
      const r = migrate(db);
      assert.equal(r.from, 0);
      assert.equal(r.to, LATEST_SCHEMA_VERSION);
      assert.deepEqual(r.applied, migrations.map((m) => m.version));
      assert.equal(db.pragma('user_version', { simple: true }), LATEST_SCHEMA_VERSION);

      assert.deepEqual(names(db, 'table'), ['builtin_lighthouses', 'clusters', 'config_bundles', 'nodes', 'operator_tokens', 'render_index', 'revoked_certs', 'schema_migrations', 'tenants']);
      const indexes = names(db, 'index');
      for (const idx of ['nodes_cluster_lighthouse', 'nodes_cluster_relay', 'nodes_cert_fingerprint', 'revoked_certs_expiry', 'nodes_config_index']) {
        assert.ok(indexes.includes(idx), `missing index ${idx}`);
      }

      for (const table of ['clusters', 'nodes', 'operator_tokens']) {
        assert.ok(uniqueIndexColumns(db, table).includes('token_hash'), `${table}.token_hash has no unique index`);
        // The unique index is a real entry in sqlite_master (an autoindex with no SQL).
        const rows = db
          .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name LIKE 'sqlite_autoindex_%'")
          .all(table);
        assert.ok(rows.length >= 1, `no autoindex for ${table}`);
      }
      assert.ok(uniqueIndexColumns(db, 'tenants').includes('name'));
      assert.ok(uniqueIndexColumns(db, 'clusters').includes('tenant_id,name'));
      assert.ok(uniqueIndexColumns(db, 'nodes').includes('cluster_id,name'));
      assert.ok(uniqueIndexColumns(db, 'nodes').includes('cluster_id,overlay_ip'));

      const recorded = db.prepare('SELECT version, name FROM schema_migrations ORDER BY version').all();
      assert.deepEqual(recorded, migrations.map((m) => ({ version: m.version, name: m.name })));
    });
  });

  it('turns foreign keys on and uses WAL', () => {
    const file = freshPath();
    withDb(file, (db) => {
      migrate(db);
      assert.equal(db.pragma('foreign_keys', { simple: true }), 1);
      assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    });
    // WAL is a property of the file: a plain connection sees it too.
    const plain = new Database(file, { readonly: true });
    try {
      assert.equal(plain.pragma('journal_mode', { simple: true }), 'wal');
    } finally {
      plain.close();
    }
  });

  it('applies nothing the second time', () => {
    const file = freshPath();
    withDb(file, (db) => migrate(db));
    withDb(file, (db) => {
      const r = migrate(db);
      assert.deepEqual(r, { from: LATEST_SCHEMA_VERSION, to: LATEST_SCHEMA_VERSION, applied: [] });
      const count = db.prepare('SELECT count(*) AS n FROM schema_migrations').get() as { n: number };
      assert.equal(count.n, migrations.length);
    });
  });

  it('keeps data across a second run', () => {
    const file = freshPath();
    withDb(file, (db) => {
      migrate(db);
      db.prepare("INSERT INTO tenants VALUES ('t1', 'acme', 'x', 'x')").run();
    });
    withDb(file, (db) => {
      migrate(db);
      assert.deepEqual(db.prepare('SELECT id, name FROM tenants').all(), [{ id: 't1', name: 'acme' }]);
    });
  });

  it('refuses a database written by a newer release', () => {
    const file = freshPath();
    withDb(file, (db) => {
      migrate(db);
      db.pragma(`user_version = ${LATEST_SCHEMA_VERSION + 1}`);
    });
    withDb(file, (db) => {
      assert.throws(() => migrate(db), (err: unknown) => err instanceof MigrationError && /newer/.test(err.message));
      assert.equal(db.pragma('user_version', { simple: true }), LATEST_SCHEMA_VERSION + 1);
    });
  });

  it('rolls a failing migration back whole, leaving the version where it was', () => {
    const file = freshPath();
    withDb(file, (db) => migrate(db));
    const bad = { version: LATEST_SCHEMA_VERSION + 1, name: 'broken', sql: 'CREATE TABLE half_done (x); SELECT * FROM no_such_table;' };
    migrations.push(bad);
    try {
      withDb(file, (db) => {
        assert.throws(() => migrate(db), /no_such_table/);
        assert.equal(db.pragma('user_version', { simple: true }), LATEST_SCHEMA_VERSION);
        assert.ok(!names(db, 'table').includes('half_done'), 'the partial migration was not rolled back');
        const rec = db.prepare('SELECT count(*) AS n FROM schema_migrations WHERE version = ?').get(bad.version) as { n: number };
        assert.equal(rec.n, 0);
      });
    } finally {
      migrations.splice(migrations.indexOf(bad), 1);
    }
  });

  it('upgrades a version 1 database in place: clusters get the default network, nodes no certificate', () => {
    const file = freshPath();
    const later = migrations.splice(1);
    try {
      withDb(file, (db) => {
        migrate(db);
        db.prepare("INSERT INTO tenants VALUES ('t1', 'acme', 'x', 'x')").run();
        db.prepare("INSERT INTO clusters (id, tenant_id, name, token_hash, created_at, updated_at) VALUES ('c1', 't1', 'c', 'h1', 'x', 'x')").run();
        db.prepare("INSERT INTO nodes (id, cluster_id, name, token_hash, created_at, updated_at) VALUES ('n1', 'c1', 'n', 'h2', 'x', 'x')").run();
      });
    } finally {
      migrations.push(...later);
    }
    withDb(file, (db) => {
      const r = migrate(db);
      assert.equal(r.from, 1);
      assert.ok(r.applied.includes(2));
      assert.equal(db.prepare("SELECT overlay_cidr FROM clusters WHERE id = 'c1'").pluck().get(), '10.42.0.0/16');
      assert.deepEqual(db.prepare("SELECT groups, cert_pem, cert_fingerprint, cert_expires_at FROM nodes WHERE id = 'n1'").get(), {
        groups: '[]',
        cert_pem: null,
        cert_fingerprint: null,
        cert_expires_at: null,
      });
      // The blocklist goes with its cluster.
      db.prepare("INSERT INTO revoked_certs VALUES ('c1', 'f1', 'n1', 'n', 'deleted', 'y', 'x')").run();
      db.prepare("DELETE FROM nodes WHERE id = 'n1'").run();
      db.prepare("DELETE FROM clusters WHERE id = 'c1'").run();
      assert.equal(db.prepare('SELECT count(*) FROM revoked_certs').pluck().get(), 0);
    });
  });

  it('has strictly increasing migration versions starting at 1', () => {
    assert.equal(migrations[0]?.version, 1);
    for (let i = 1; i < migrations.length; i++) assert.ok(migrations[i]!.version > migrations[i - 1]!.version);
  });
});

describe('constraints after migrate', () => {
  let file: string;
  before(() => {
    file = freshPath();
    withDb(file, (db) => {
      migrate(db);
      db.prepare("INSERT INTO tenants VALUES ('t1', 'acme', 'x', 'x')").run();
      db.prepare("INSERT INTO clusters (id, tenant_id, name, token_hash, created_at, updated_at) VALUES ('c1', 't1', 'c', 'h1', 'x', 'x')").run();
    });
  });

  it('refuses a node for a missing cluster (foreign keys enforced)', () => {
    withDb(file, (db) => {
      assert.throws(
        () =>
          db
            .prepare("INSERT INTO nodes (id, cluster_id, name, token_hash, created_at, updated_at) VALUES ('n1', 'nope', 'n', 'h2', 'x', 'x')")
            .run(),
        (err: unknown) => (err as { code?: string }).code === 'SQLITE_CONSTRAINT_FOREIGNKEY',
      );
    });
  });

  it('refuses a cluster for a missing tenant', () => {
    withDb(file, (db) => {
      assert.throws(
        () => db.prepare("INSERT INTO clusters (id, tenant_id, name, token_hash, created_at, updated_at) VALUES ('c2', 'nope', 'c', 'h3', 'x', 'x')").run(),
        (err: unknown) => (err as { code?: string }).code === 'SQLITE_CONSTRAINT_FOREIGNKEY',
      );
    });
  });

  it('refuses to delete a tenant that still has clusters (ON DELETE RESTRICT)', () => {
    withDb(file, (db) => {
      assert.throws(() => db.prepare("DELETE FROM tenants WHERE id = 't1'").run(), /FOREIGN KEY/);
    });
  });

  it('refuses a duplicate token_hash', () => {
    withDb(file, (db) => {
      assert.throws(
        () => db.prepare("INSERT INTO clusters (id, tenant_id, name, token_hash, created_at, updated_at) VALUES ('c3', 't1', 'other', 'h1', 'x', 'x')").run(),
        (err: unknown) => (err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE',
      );
    });
  });

  it('enforces the MTU check', () => {
    withDb(file, (db) => {
      assert.throws(
        () =>
          db
            .prepare("INSERT INTO nodes (id, cluster_id, name, token_hash, mtu, created_at, updated_at) VALUES ('n9', 'c1', 'n', 'h9', 99, 'x', 'x')")
            .run(),
        (err: unknown) => (err as { code?: string }).code === 'SQLITE_CONSTRAINT_CHECK',
      );
    });
  });

  it('cascades node deletion with its cluster', () => {
    withDb(file, (db) => {
      db.prepare("INSERT INTO clusters (id, tenant_id, name, token_hash, created_at, updated_at) VALUES ('c4', 't1', 'c4', 'h4', 'x', 'x')").run();
      db.prepare("INSERT INTO nodes (id, cluster_id, name, token_hash, created_at, updated_at) VALUES ('n4', 'c4', 'n', 'h5', 'x', 'x')").run();
      db.prepare("DELETE FROM clusters WHERE id = 'c4'").run();
      assert.equal(db.prepare("SELECT count(*) AS n FROM nodes WHERE id = 'n4'").pluck().get(), 0);
    });
  });
});
