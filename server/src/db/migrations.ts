import type { Db } from './connection.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * Numbered, append-only. Never edit a migration that has shipped: add the next one.
 * Each runs inside one transaction together with its bookkeeping row.
 */
export const migrations: Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
      CREATE TABLE tenants (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
      );

      CREATE TABLE clusters (
        id                     TEXT PRIMARY KEY,
        tenant_id              TEXT NOT NULL REFERENCES tenants(id) ON DELETE RESTRICT,
        name                   TEXT NOT NULL,
        token_hash             TEXT NOT NULL UNIQUE,
        lighthouse_port        INTEGER NOT NULL DEFAULT 4242 CHECK (lighthouse_port BETWEEN 1 AND 65535),
        config_version         INTEGER NOT NULL DEFAULT 1,
        current_bundle_version INTEGER,
        ca_cert                TEXT,
        ca_key_encrypted       BLOB,
        crl                    TEXT,
        created_at             TEXT NOT NULL,
        updated_at             TEXT NOT NULL,
        UNIQUE (tenant_id, name)
      );

      CREATE TABLE nodes (
        id              TEXT PRIMARY KEY,
        cluster_id      TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
        name            TEXT NOT NULL,
        token_hash      TEXT NOT NULL UNIQUE,
        is_admin        INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
        mtu             INTEGER NOT NULL DEFAULT 1300 CHECK (mtu BETWEEN 1280 AND 9000),
        routes          TEXT NOT NULL DEFAULT '[]',
        is_lighthouse   INTEGER NOT NULL DEFAULT 0 CHECK (is_lighthouse IN (0, 1)),
        public_ip       TEXT,
        lighthouse_port INTEGER CHECK (lighthouse_port BETWEEN 1 AND 65535),
        is_relay        INTEGER NOT NULL DEFAULT 0 CHECK (is_relay IN (0, 1)),
        overlay_ip      TEXT,
        last_seen_at    TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        UNIQUE (cluster_id, name),
        UNIQUE (cluster_id, overlay_ip)
      );
      CREATE INDEX nodes_cluster_lighthouse ON nodes (cluster_id, is_lighthouse);
      CREATE INDEX nodes_cluster_relay ON nodes (cluster_id, is_relay);

      CREATE TABLE config_bundles (
        cluster_id  TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
        version     INTEGER NOT NULL CHECK (version > 0),
        data        BLOB NOT NULL CHECK (length(data) <= 10485760),
        sha256      TEXT NOT NULL,
        size_bytes  INTEGER NOT NULL,
        created_by  TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        PRIMARY KEY (cluster_id, version)
      ) WITHOUT ROWID;

      CREATE TABLE operator_tokens (
        id          TEXT PRIMARY KEY,
        token_hash  TEXT NOT NULL UNIQUE,
        created_at  TEXT NOT NULL
      );
    `,
  },
  {
    version: 2,
    name: 'cluster pki: overlay network, node certificates, blocklist',
    // The blocklist replaces the unused clusters.crl column of version 1 (Nebula revokes by
    // fingerprint, not by CRL). Existing clusters get the default network; their nodes' IPs are
    // checked against it only when they enroll.
    sql: `
      ALTER TABLE clusters ADD COLUMN overlay_cidr TEXT NOT NULL DEFAULT '10.42.0.0/16';

      ALTER TABLE nodes ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
      ALTER TABLE nodes ADD COLUMN cert_pem TEXT;
      ALTER TABLE nodes ADD COLUMN cert_fingerprint TEXT;
      ALTER TABLE nodes ADD COLUMN cert_expires_at TEXT;
      CREATE UNIQUE INDEX nodes_cert_fingerprint ON nodes (cert_fingerprint) WHERE cert_fingerprint IS NOT NULL;

      CREATE TABLE revoked_certs (
        cluster_id   TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
        fingerprint  TEXT NOT NULL,
        node_id      TEXT NOT NULL,
        node_name    TEXT NOT NULL,
        reason       TEXT NOT NULL CHECK (reason IN ('deleted', 'reenrolled', 'changed')),
        expires_at   TEXT NOT NULL,
        revoked_at   TEXT NOT NULL,
        PRIMARY KEY (cluster_id, fingerprint)
      ) WITHOUT ROWID;
      CREATE INDEX revoked_certs_expiry ON revoked_certs (cluster_id, expires_at);
    `,
  },
  {
    version: 3,
    name: 'built-in lighthouses; per-node rendered config versions',
    // config_index is taken from render_index, one counter for the whole database (as Consul's
    // raft index), so "which nodes moved since index X" is one range scan after each commit.
    // config_sha256 is the hash of the node's rendered content; NULL until first rendered.
    // config_yml is the bundle's config.yml as uploaded, so rendering reads the template without
    // unpacking the archive; NULL only for bundles stored before it, until the start-up backfill.
    sql: `
      ALTER TABLE clusters ADD COLUMN provide_lighthouse INTEGER NOT NULL DEFAULT 0 CHECK (provide_lighthouse IN (0, 1));
      CREATE TABLE builtin_lighthouses (
        cluster_id       TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
        server_id        TEXT NOT NULL,
        overlay_ip       TEXT NOT NULL,
        public_host      TEXT NOT NULL,
        port             INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
        cert_pem         TEXT NOT NULL,
        cert_fingerprint TEXT NOT NULL,
        cert_expires_at  TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        PRIMARY KEY (cluster_id, server_id),
        UNIQUE (cluster_id, overlay_ip)
      ) WITHOUT ROWID;

      ALTER TABLE nodes ADD COLUMN config_index INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE nodes ADD COLUMN config_sha256 TEXT;
      CREATE INDEX nodes_config_index ON nodes (config_index);
      CREATE TABLE render_index (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
      );
      INSERT INTO render_index (id, value) VALUES (1, 0);

      ALTER TABLE config_bundles ADD COLUMN config_yml TEXT;
    `,
  },
];

export const LATEST_SCHEMA_VERSION = migrations[migrations.length - 1]!.version;

export class MigrationError extends Error {}

export interface MigrationResult {
  from: number;
  to: number;
  applied: number[];
}

/** Brings the schema to the latest version. Refuses a database written by a newer release. */
export function migrate(db: Db, now: () => string = () => new Date().toISOString()): MigrationResult {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`);
  const from = db.pragma('user_version', { simple: true }) as number;
  if (from > LATEST_SCHEMA_VERSION) {
    throw new MigrationError(
      `database schema is version ${from}, newer than this release understands (${LATEST_SCHEMA_VERSION}); upgrade nebulagc-server`,
    );
  }
  const applied: number[] = [];
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
  for (const m of migrations) {
    if (m.version <= from) continue;
    db.transaction(() => {
      db.exec(m.sql);
      record.run(m.version, m.name, now());
      db.pragma(`user_version = ${m.version}`);
    }).immediate();
    applied.push(m.version);
  }
  return { from, to: LATEST_SCHEMA_VERSION, applied };
}
