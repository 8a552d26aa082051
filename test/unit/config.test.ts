import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError, loadConfig, type Config } from '../../server/src/config.js';
import { resolveHmacSecret } from '../../server/src/secrets.js';

const GOOD_SECRET = 'config-test-secret-0123456789abcdef012345';

/** Asserts loadConfig throws a ConfigError that names `envVar`. */
function refuses(env: NodeJS.ProcessEnv, envVar: string, message?: RegExp): void {
  assert.throws(
    () => loadConfig(env),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
      assert.ok(err.message.includes(envVar), `"${err.message}" does not name ${envVar}`);
      if (message) assert.match(err.message, message);
      return true;
    },
  );
}

describe('loadConfig', () => {
  it('has defaults for everything', () => {
    const c = loadConfig({});
    assert.deepEqual(c.listen, { host: '0.0.0.0', port: 8080 });
    assert.equal(c.dbPath, './data/nebulagc.db');
    assert.equal(c.hmacSecret, undefined);
    assert.equal(c.adminToken, undefined);
    assert.equal(c.dev, false);
    assert.equal(c.nodeId, os.hostname());
    assert.equal(c.logLevel, 'info');
    assert.equal(c.haMode, 'standalone');
    assert.equal(c.synchronous, 'FULL');
    assert.equal(c.maxBodyBytes, 64 * 1024);
    assert.equal(c.maxBundleBytes, 10 * 1024 * 1024);
    assert.equal(c.heartbeatFlushMs, 2000);
    assert.equal(c.trustProxy, false);
    assert.deepEqual(c.rateLimits, {
      ip: { rps: 100, burst: 200 },
      node: { rps: 5, burst: 20 },
      cluster: { rps: 2000, burst: 4000 },
    });
  });

  it('reads env vars', () => {
    const c = loadConfig({
      NEBULAGC_LISTEN: '127.0.0.1:9999',
      NEBULAGC_DB_PATH: '/var/lib/nebulagc/x.db',
      NEBULAGC_HMAC_SECRET: GOOD_SECRET,
      NEBULAGC_DEV: 'yes',
      NEBULAGC_DB_SYNCHRONOUS: 'NORMAL',
      NEBULAGC_RATE_LIMIT_IP_RPS: '0',
      NEBULAGC_RATE_LIMIT_NODE_BURST: '7',
      NEBULAGC_TRUST_PROXY: '1',
      NEBULAGC_MAX_BUNDLE_BYTES: '1234',
    });
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 9999 });
    assert.equal(c.dbPath, '/var/lib/nebulagc/x.db');
    assert.equal(c.hmacSecret, GOOD_SECRET);
    assert.equal(c.dev, true);
    assert.equal(c.synchronous, 'NORMAL');
    assert.equal(c.rateLimits.ip.rps, 0);
    assert.equal(c.rateLimits.node.burst, 7);
    assert.equal(c.trustProxy, true);
    assert.equal(c.maxBundleBytes, 1234);
  });

  it('takes the master’s checkpoint step from the durability mode unless it is set', () => {
    assert.equal(loadConfig({}).replication.walCheckpointBytes, 4 * 1024 * 1024, 'FULL, the default');
    assert.equal(loadConfig({ NEBULAGC_DB_SYNCHRONOUS: 'NORMAL' }).replication.walCheckpointBytes, 16 * 1024 * 1024);
    assert.equal(loadConfig({ NEBULAGC_DB_SYNCHRONOUS: 'NORMAL', NEBULAGC_WAL_CHECKPOINT_BYTES: '0' }).replication.walCheckpointBytes, 0);
    assert.equal(loadConfig({ NEBULAGC_WAL_CHECKPOINT_BYTES: '1048576' }).replication.walCheckpointBytes, 1048576);
  });

  it('parses an IPv6 listen address', () => {
    assert.deepEqual(loadConfig({ NEBULAGC_LISTEN: '[::1]:8443' }).listen, { host: '::1', port: 8443 });
  });

  it('brackets an IPv6 listen address in the default advertise URL', () => {
    const url = loadConfig({ NEBULAGC_LISTEN: '[fd00::7]:8443' }).replication.advertiseUrl;
    assert.equal(url, 'http://[fd00::7]:8443');
    assert.equal(new URL(url).port, '8443');
    assert.equal(loadConfig({ NEBULAGC_LISTEN: '10.1.2.3:8080' }).replication.advertiseUrl, 'http://10.1.2.3:8080');
  });

  it('lets flags override env vars', () => {
    const c = loadConfig(
      { NEBULAGC_LISTEN: '10.0.0.1:1000', NEBULAGC_LOG_LEVEL: 'debug', NEBULAGC_DB_PATH: '/env.db' },
      { NEBULAGC_LISTEN: '127.0.0.1:2000', NEBULAGC_DB_PATH: '/flag.db' },
    );
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 2000 });
    assert.equal(c.dbPath, '/flag.db');
    assert.equal(c.logLevel, 'debug', 'an env var without a flag still applies');
  });

  it('treats empty strings as unset', () => {
    const c = loadConfig({ NEBULAGC_LISTEN: '', NEBULAGC_HMAC_SECRET: '' }, { NEBULAGC_DB_PATH: '' });
    assert.deepEqual(c.listen, { host: '0.0.0.0', port: 8080 });
    assert.equal(c.hmacSecret, undefined);
    assert.equal(c.dbPath, './data/nebulagc.db');
  });

  it('ignores unrelated env vars', () => {
    assert.doesNotThrow(() => loadConfig({ PATH: '/bin', NEBULAGC_UNKNOWN: 'x' }));
  });

  it('refuses a bad NEBULAGC_LISTEN', () => {
    refuses({ NEBULAGC_LISTEN: 'nonsense' }, 'NEBULAGC_LISTEN', /HOST:PORT/);
    refuses({ NEBULAGC_LISTEN: '127.0.0.1:' }, 'NEBULAGC_LISTEN');
    refuses({ NEBULAGC_LISTEN: '127.0.0.1:70000' }, 'NEBULAGC_LISTEN', /65535/);
  });

  it('refuses a short NEBULAGC_HMAC_SECRET', () => {
    refuses({ NEBULAGC_HMAC_SECRET: 'short' }, 'NEBULAGC_HMAC_SECRET', /32/);
    refuses({ NEBULAGC_HMAC_SECRET: 'x'.repeat(31) }, 'NEBULAGC_HMAC_SECRET');
    assert.equal(loadConfig({ NEBULAGC_HMAC_SECRET: 'x'.repeat(32) }).hmacSecret, 'x'.repeat(32));
  });

  it('refuses a short NEBULAGC_ADMIN_TOKEN', () => {
    refuses({ NEBULAGC_ADMIN_TOKEN: 'admin' }, 'NEBULAGC_ADMIN_TOKEN');
  });

  it('refuses negative or non-numeric rate limits', () => {
    refuses({ NEBULAGC_RATE_LIMIT_IP_RPS: '-1' }, 'NEBULAGC_RATE_LIMIT_IP_RPS');
    refuses({ NEBULAGC_RATE_LIMIT_CLUSTER_BURST: 'lots' }, 'NEBULAGC_RATE_LIMIT_CLUSTER_BURST');
  });

  it('refuses bad sizes, booleans and enums, naming the variable', () => {
    refuses({ NEBULAGC_MAX_BODY_BYTES: '0' }, 'NEBULAGC_MAX_BODY_BYTES');
    refuses({ NEBULAGC_MAX_BUNDLE_BYTES: '1.5' }, 'NEBULAGC_MAX_BUNDLE_BYTES');
    refuses({ NEBULAGC_HEARTBEAT_FLUSH_MS: 'soon' }, 'NEBULAGC_HEARTBEAT_FLUSH_MS');
    refuses({ NEBULAGC_DEV: 'maybe' }, 'NEBULAGC_DEV');
    refuses({ NEBULAGC_LOG_LEVEL: 'loud' }, 'NEBULAGC_LOG_LEVEL');
    refuses({ NEBULAGC_DB_SYNCHRONOUS: 'OFF' }, 'NEBULAGC_DB_SYNCHRONOUS');
    refuses({ NEBULAGC_HA_MODE: 'chaos' }, 'NEBULAGC_HA_MODE');
  });

  it('reads the PKI settings: nebula-cert path and Go-style lifetimes in seconds', () => {
    assert.deepEqual(loadConfig({}).pki, { nebulaCertBin: 'nebula-cert', caLifetimeS: 87600 * 3600, certLifetimeS: 720 * 3600 });
    const c = loadConfig({ NEBULAGC_NEBULA_CERT_BIN: '/opt/nebula/nebula-cert', NEBULAGC_CERT_LIFETIME: '1h30m', NEBULAGC_CA_LIFETIME: '8760h' });
    assert.deepEqual(c.pki, { nebulaCertBin: '/opt/nebula/nebula-cert', caLifetimeS: 8760 * 3600, certLifetimeS: 5400 });
    assert.equal(loadConfig({ NEBULAGC_CERT_LIFETIME: '90s' }).pki.certLifetimeS, 90);
  });

  it('reads the lighthouse settings: the public host follows the advertised URL, else the listen host', () => {
    const d = loadConfig({ NEBULAGC_LISTEN: '127.0.0.5:8080', NEBULAGC_DB_PATH: '/var/lib/x/n.db' }).lighthouse;
    assert.deepEqual(d, { nebulaBin: 'nebula', publicHost: '127.0.0.5', listenHost: '0.0.0.0', dir: '/var/lib/x/n.db-lighthouses' });
    assert.equal(loadConfig({ NEBULAGC_ADVERTISE_URL: 'https://cp1.example.net:8443' }).lighthouse.publicHost, 'cp1.example.net');
    assert.equal(loadConfig({ NEBULAGC_ADVERTISE_URL: 'http://[2001:db8::1]:80' }).lighthouse.publicHost, '2001:db8::1');
    const set = loadConfig({ NEBULAGC_LIGHTHOUSE_PUBLIC_HOST: '198.51.100.7', NEBULAGC_LIGHTHOUSE_LISTEN_HOST: '10.0.0.1', NEBULAGC_NEBULA_BIN: '/opt/nebula' });
    assert.deepEqual([set.lighthouse.publicHost, set.lighthouse.listenHost, set.lighthouse.nebulaBin], ['198.51.100.7', '10.0.0.1', '/opt/nebula']);
    refuses({ NEBULAGC_LIGHTHOUSE_LISTEN_HOST: 'not an ip' }, 'NEBULAGC_LIGHTHOUSE_LISTEN_HOST');
  });

  it('refuses bad lifetimes, naming the variable', () => {
    for (const v of ['h', '10', '10d', '1.5h', '-1h', '30s', '1m1h']) refuses({ NEBULAGC_CERT_LIFETIME: v }, 'NEBULAGC_CERT_LIFETIME');
    refuses({ NEBULAGC_CA_LIFETIME: '1000000h' }, 'NEBULAGC_CA_LIFETIME');
    refuses({ NEBULAGC_CERT_LIFETIME: '9000h', NEBULAGC_CA_LIFETIME: '8760h' }, 'NEBULAGC_CERT_LIFETIME', /must not exceed NEBULAGC_CA_LIFETIME/);
  });

  it('refuses a bad value given as a flag, naming the variable', () => {
    assert.throws(() => loadConfig({}, { NEBULAGC_LISTEN: 'nope' }), (e: unknown) => e instanceof ConfigError && e.message.includes('NEBULAGC_LISTEN'));
  });
});

describe('resolveHmacSecret', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-secrets-'));
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  const config = (over: Partial<Config>): Config => ({ ...loadConfig({}), ...over });

  it('uses NEBULAGC_HMAC_SECRET when set', () => {
    assert.deepEqual(resolveHmacSecret(config({ hmacSecret: GOOD_SECRET, dbPath: path.join(dir, 'env', 'x.db') })), {
      secret: GOOD_SECRET,
      source: 'env',
    });
    assert.equal(existsSync(path.join(dir, 'env', 'hmac-secret')), false, 'no dev file is written when the env var is set');
  });

  it('refuses without a secret unless in dev mode, naming NEBULAGC_HMAC_SECRET', () => {
    const dbPath = path.join(dir, 'prod', 'x.db');
    assert.throws(
      () => resolveHmacSecret(config({ hmacSecret: undefined, dev: false, dbPath })),
      (e: unknown) => e instanceof ConfigError && e.message.includes('NEBULAGC_HMAC_SECRET'),
    );
    assert.equal(existsSync(path.join(dir, 'prod', 'hmac-secret')), false);
  });

  it('in dev mode creates a 0600 secret file next to the database once, then reuses it', () => {
    const dbPath = path.join(dir, 'dev', 'nested', 'x.db');
    const file = path.join(dir, 'dev', 'nested', 'hmac-secret');
    const first = resolveHmacSecret(config({ hmacSecret: undefined, dev: true, dbPath }));
    assert.equal(first.source, 'dev-file');
    assert.ok(first.secret.length >= 32);
    assert.match(first.secret, /^[0-9a-f]{64}$/);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(readFileSync(file, 'utf8').trim(), first.secret);
    const mtime = statSync(file).mtimeMs;

    const second = resolveHmacSecret(config({ hmacSecret: undefined, dev: true, dbPath }));
    assert.deepEqual(second, first);
    assert.equal(statSync(file).mtimeMs, mtime, 'the file should not be rewritten');

    // Another database directory gets its own secret.
    const other = resolveHmacSecret(config({ hmacSecret: undefined, dev: true, dbPath: path.join(dir, 'dev2', 'x.db') }));
    assert.notEqual(other.secret, first.secret);
  });

  it('in dev mode the env secret still wins over the file', () => {
    const dbPath = path.join(dir, 'dev', 'nested', 'x.db');
    assert.deepEqual(resolveHmacSecret(config({ hmacSecret: GOOD_SECRET, dev: true, dbPath })), { secret: GOOD_SECRET, source: 'env' });
  });

  it('in dev mode refuses a secret file that is empty or too short instead of keying with it', () => {
    const dbPath = path.join(dir, 'weak', 'x.db');
    rmSync(path.dirname(dbPath), { recursive: true, force: true });
    resolveHmacSecret(config({ hmacSecret: undefined, dev: true, dbPath }));
    writeFileSync(path.join(dir, 'weak', 'hmac-secret'), '\n');
    let result: { secret: string } | undefined;
    try {
      result = resolveHmacSecret(config({ hmacSecret: undefined, dev: true, dbPath }));
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return;
    }
    assert.ok(result.secret.length >= 32, `an empty hmac-secret file gave the secret ${JSON.stringify(result.secret)}`);
  });
});
