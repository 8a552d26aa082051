import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { clusterDir, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { call, TEST_ADMIN_TOKEN, TEST_SECRET } from '../helpers/server.js';

const MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../server/src/cli/main.js');

function cli(args: string[], env: Record<string, string>): { status: number | null; stdout: string; stderr: string } {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const r = spawnSync(process.execPath, [MAIN, ...args], { env: { ...inherited, ...env }, encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('replication CLI commands', { timeout: 60_000 }, () => {
  const dir = clusterDir('repl-cli');
  let master: ServerProcess;
  let replica: ServerProcess;
  before(async () => {
    master = await startNode('master', dir.root, { NEBULAGC_HA_MODE: 'master' });
    replica = await startNode('replica', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url });
    const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };
    for (let i = 0; i < 5; i++) await call(master.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: `cli-${i}` } });
    const target = (await call(master.url, 'GET', '/health')).body.position.txid as number;
    assert.ok(await waitUntil(async () => (await call(replica.url, 'GET', '/health')).body.position?.txid === target));
  });
  after(async () => {
    await replica?.stop();
    await master?.stop();
    dir.remove();
  });

  it('`db checksum` is equal on the master and a caught-up replica, and names the recorded position', () => {
    const m = cli(['db', 'checksum', '--db', master.dbPath], {});
    const r = cli(['db', 'checksum', '--db', replica.dbPath], {});
    assert.equal(m.status, 0, m.stderr);
    assert.equal(r.status, 0, r.stderr);
    const mj = JSON.parse(m.stdout);
    const rj = JSON.parse(r.stdout);
    assert.match(mj.checksum, /^[0-9a-f]{16}$/);
    assert.equal(rj.checksum, mj.checksum);
    assert.equal(rj.replica_position.checksum, rj.checksum);
    assert.equal(mj.master_log_position.txid, rj.replica_position.txid);
  });

  it('`replication status` shows the master with its replica, and fails clearly without a token', () => {
    const ok = cli(['replication', 'status', '--url', master.url], { NEBULAGC_OPERATOR_TOKEN: TEST_ADMIN_TOKEN, NEBULAGC_HMAC_SECRET: TEST_SECRET });
    assert.equal(ok.status, 0, ok.stderr);
    const status = JSON.parse(ok.stdout);
    assert.equal(status.ha_mode, 'master');
    assert.deepEqual(
      status.replicas.map((x: { id: string }) => x.id),
      ['replica'],
    );
    const onReplica = JSON.parse(cli(['replication', 'status', '--url', replica.url], { NEBULAGC_OPERATOR_TOKEN: TEST_ADMIN_TOKEN }).stdout);
    assert.equal(onReplica.ha_mode, 'replica');
    assert.equal(onReplica.master_url, master.url);
    const missing = cli(['replication', 'status', '--url', master.url], {});
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /^nebulagc-server: error: .*NEBULAGC_OPERATOR_TOKEN/);
    assert.equal(missing.stderr.trim().split('\n').length, 1);
  });
});
