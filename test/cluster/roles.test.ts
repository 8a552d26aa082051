/**
 * Runtime roles between real server processes on 127.0.0.1: one writer per database,
 * switchover under a write load and back, promotion after kill -9, divergence kept in
 * quarantine, secret and epoch checks, and the transition metric. Every test bounds its time,
 * kills its processes and removes its directory.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { promotionRefusal } from '../../server/src/ha/node.js';
import { clusterDir, freePort, REPLICATION_SECRET, startNode, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { call, TEST_ADMIN_TOKEN } from '../helpers/server.js';
import { health, isMaster, metric, tenantNames } from '../helpers/probes.js';
import { WriteLoad } from '../helpers/write-load.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../server/src/cli/main.js');
const op = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` };

const roots: { remove(): void }[] = [];
const nodes: ServerProcess[] = [];
after(async () => {
  await Promise.all(nodes.map((n) => n.kill9()));
  for (const r of roots) r.remove();
});

async function cluster(label: string, replicas: string[]): Promise<{ root: string; master: ServerProcess; replicas: ServerProcess[] }> {
  const dir = clusterDir(label);
  roots.push(dir);
  const master = await startNode('n1', dir.root, { NEBULAGC_HA_MODE: 'master' });
  nodes.push(master);
  const rs: ServerProcess[] = [];
  for (const name of replicas) {
    const r = await startNode(name, dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: master.url });
    nodes.push(r);
    rs.push(r);
  }
  for (const r of rs) assert.ok(await waitUntil(async () => (await health(r)).ha_state === 'replica.following', 20_000), `${r.name} follows:\n${r.output()}`);
  return { root: dir.root, master, replicas: rs };
}

const sha = (n: ServerProcess): string => {
  const db = new Database(n.dbPath, { readonly: true });
  try {
    return (db.prepare("SELECT group_concat(name || ':' || id, ',') AS s FROM (SELECT name, id FROM tenants ORDER BY id)").get() as { s: string }).s;
  } finally {
    db.close();
  }
};
const snapshotsOf = (n: ServerProcess): number => (n.output().match(/"msg":"snapshot installed"/g) ?? []).length;

function cli(args: string[], env: Record<string, string>): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code: code ?? -1, out });
    });
  });
}

describe('runtime roles', { timeout: 240_000 }, () => {
  it('a second writer on the same database files exits non-zero, naming the holder', async () => {
    const { root, master } = await cluster('one-writer', []);
    const second = await cli(['serve'], {
      NEBULAGC_LISTEN: '127.0.0.1:0',
      NEBULAGC_DB_PATH: master.dbPath,
      NEBULAGC_HMAC_SECRET: 'test-hmac-secret-0123456789abcdef0123456789abcdef',
      NEBULAGC_HA_MODE: 'master',
      NEBULAGC_REPLICATION_SECRET: REPLICATION_SECRET,
      NEBULAGC_NODE_ID: 'intruder',
    });
    assert.notEqual(second.code, 0, second.out);
    assert.match(second.out, new RegExp(`pid ${master.child.pid}`), second.out);
    assert.match(second.out, /is the writer of/);
    assert.ok(await isMaster(master), 'the first master still serves');
    assert.ok(root);
  });

  it('switchover under a write load loses no acknowledged write, starts an epoch, continues txids, and the third node resumes without a snapshot; then back again', async () => {
    const { master: n1, replicas } = await cluster('switchover', ['n2', 'n3']);
    const [n2, n3] = replicas as [ServerProcess, ServerProcess];
    const load = new WriteLoad([n1.url, n2.url, n3.url], 'sw');
    load.start();
    await waitUntil(() => load.acks.length >= 30, 20_000);
    const epochBefore = (await health(n1)).epoch as number;
    const n3Snapshots = snapshotsOf(n3);
    const n1Snapshots = snapshotsOf(n1);
    const sw = await call(n1.url, 'POST', '/cluster/switchover', { headers: op, json: { to: 'n2' } });
    assert.equal(sw.status, 200, JSON.stringify(sw.body));
    assert.equal(sw.body.node_id, 'n2');
    assert.equal(sw.body.epoch, epochBefore + 1);
    await waitUntil(() => load.acks.filter((a) => a.origin === n2.url).length >= 30, 20_000);

    const back = await call(n2.url, 'POST', '/cluster/switchover', { headers: op, json: { to: 'n1' } });
    assert.equal(back.status, 200, JSON.stringify(back.body));
    assert.equal(back.body.epoch, epochBefore + 2);
    await waitUntil(() => load.acks.filter((a) => a.origin === n1.url && a.txid > back.body.position.txid).length >= 30, 20_000);
    const acks = await load.stop();

    assert.ok(await isMaster(n1));
    assert.ok(!(await isMaster(n2)));
    for (let i = 1; i < acks.length; i++) assert.ok(acks[i]!.txid > acks[i - 1]!.txid, `txids keep growing: ${acks[i - 1]!.txid} then ${acks[i]!.txid}`);
    assert.ok(load.retries.unavailable + load.retries.redirects > 0, 'the client met the switchovers');
    const head = (await health(n1)).position.txid as number;
    for (const n of [n1, n2, n3]) {
      assert.ok(await waitUntil(async () => (await health(n)).position?.txid === head, 10_000), `${n.name} reaches txid ${head}`);
      const names = tenantNames(n);
      const lost = acks.filter((a) => !names.has(a.name));
      assert.deepEqual(lost, [], `${n.name} holds every acknowledged write`);
    }
    assert.equal(sha(n2), sha(n1));
    assert.equal(sha(n3), sha(n1));
    assert.equal(snapshotsOf(n3), n3Snapshots, `n3 resumed on each new master without a snapshot:\n${n3.output().slice(-3000)}`);
    assert.equal(snapshotsOf(n1), n1Snapshots, 'the old master resumed as a replica without a snapshot');
    const leader = await call(n3.url, 'GET', '/cluster/leader', { headers: op });
    assert.equal(leader.body.node_id, 'n1');
    assert.equal(leader.body.epoch, epochBefore + 2);
    const peers = await call(n1.url, 'GET', '/cluster/peers', { headers: op });
    assert.deepEqual(peers.body.peers.map((p: { id: string }) => p.id).sort(), ['n1', 'n2', 'n3']);

    // Every transition is counted.
    assert.equal(await metric(n2, /^nebulagc_ha_state_transitions_total\{from_state="replica.following",to_state="promoting"\}/), 1);
    assert.equal(await metric(n2, /^nebulagc_ha_state_transitions_total\{from_state="master.serving",to_state="master.fenced"\}/), 1);
    assert.equal(await metric(n2, /^nebulagc_ha_state_transitions_total\{from_state="master.fenced",to_state="demoting"\}/), 1);
    assert.equal(await metric(n1, /^nebulagc_ha_state_transitions_total\{from_state="demoting",to_state="replica.following"\}/), 1);
    assert.equal(await metric(n1, /^nebulagc_ha_state\{state="master.serving"\}/), 1);
  });

  it('after kill -9 of the master, promote is refused on a replica that cannot show it is caught up and accepted on one that is', async () => {
    const { root, master: n1, replicas } = await cluster('promote', ['n2', 'n3']);
    const [n2, n3] = replicas as [ServerProcess, ServerProcess];
    for (let i = 0; i < 20; i++) assert.equal((await call(n1.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: `p-${i}` } })).status, 201);
    const head = (await health(n1)).position.txid as number;
    for (const r of [n2, n3]) assert.ok(await waitUntil(async () => (await health(r)).position?.txid === head, 10_000));
    await n1.kill9();

    // n3 restarts while the master is dead: it has a copy but has heard of no master since.
    await n3.stop();
    const n3b = await n3.restart();
    nodes.push(n3b);
    const refused = await call(n3b.url, 'POST', '/cluster/promote', { headers: op, json: {} });
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.code, 'NOT_CAUGHT_UP');

    const promoted = await cli(['promote', '--url', n2.url], { NEBULAGC_OPERATOR_TOKEN: TEST_ADMIN_TOKEN });
    assert.equal(promoted.code, 0, promoted.out);
    const handover = JSON.parse(promoted.out) as { node_id: string; epoch: number; position: { txid: number } };
    assert.equal(handover.node_id, 'n2');
    assert.equal(handover.position.txid, head);
    assert.ok(await isMaster(n2));
    const w = await call(n2.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'after-promote' } });
    assert.equal(w.status, 201);
    assert.equal(Number(w.headers.get('x-nebulagc-txid')), head + 1, 'txids continue on the new master');

    // n3 is told to follow n2 (a replica's demote re-points it) and resumes without a snapshot.
    const before = snapshotsOf(n3b);
    const follow = await cli(['demote', '--master-url', n2.url, '--url', n3b.url], { NEBULAGC_OPERATOR_TOKEN: TEST_ADMIN_TOKEN });
    assert.equal(follow.code, 0, follow.out);
    assert.ok(await waitUntil(async () => (await health(n3b)).position?.txid === head + 1, 10_000), n3b.output().slice(-2000));
    assert.equal(snapshotsOf(n3b), before);
    assert.ok(root);
  });

  it('an old master’s unreplicated writes are kept in quarantine when it rejoins, and every copy ends identical', async () => {
    const { master: n1, replicas } = await cluster('diverge', ['n2', 'n3']);
    const [n2, n3] = replicas as [ServerProcess, ServerProcess];
    for (let i = 0; i < 10; i++) assert.equal((await call(n1.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: `d-${i}` } })).status, 201);
    const head = (await health(n1)).position.txid as number;
    for (const r of [n2, n3]) assert.ok(await waitUntil(async () => (await health(r)).position?.txid === head, 10_000));
    // The replicas go away (a partition, as far as the master can tell); the master writes alone.
    await n2.stop();
    await n3.stop();
    const lone = await call(n1.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'diverged-tenant' } });
    assert.equal(lone.status, 201, 'the lone write was acknowledged');
    await n1.kill9();
    const n2b = await n2.restart();
    const n3b = await n3.restart();
    nodes.push(n2b, n3b);
    const forced = await call(n3b.url, 'POST', '/cluster/promote', { headers: op, json: { force: true } });
    assert.equal(forced.status, 200, JSON.stringify(forced.body));
    assert.equal((await call(n2b.url, 'POST', '/cluster/demote', { headers: op, json: { master_url: n3b.url } })).status, 200);
    assert.equal((await call(n3b.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'new-master-tenant' } })).status, 201);

    const n1b = await startNode('n1', path.dirname(n1.dir), { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: n3b.url }, n1.port);
    nodes.push(n1b);
    const target = (await health(n3b)).position.txid as number;
    for (const n of [n1b, n2b]) assert.ok(await waitUntil(async () => (await health(n)).position?.txid === target && (await health(n)).ha_state === 'replica.following', 20_000), `${n.name}:\n${n.output().slice(-3000)}`);
    assert.equal(sha(n1b), sha(n3b));
    assert.equal(sha(n2b), sha(n3b));
    assert.ok(!tenantNames(n1b).has('diverged-tenant'), 'the rejoined copy follows the new master');

    assert.equal((await health(n1b)).quarantined_transactions, 1);
    assert.equal(await metric(n1b, /^nebulagc_ha_quarantined_transactions_total /), 1);
    await waitUntil(async () => JSON.parse((await cli(['quarantine', 'list', '--db', n1b.dbPath], {})).out).entries[0]?.changes !== null, 10_000);
    const list = JSON.parse((await cli(['quarantine', 'list', '--db', n1b.dbPath], {})).out) as { entries: { id: string; diverged_transactions: number }[] };
    assert.equal(list.entries.length, 1);
    assert.equal(list.entries[0]!.diverged_transactions, 1);
    const shown = await cli(['quarantine', 'show', list.entries[0]!.id, '--db', n1b.dbPath], {});
    const changes = (JSON.parse(shown.out) as { changes: { table: string; change: string; summary: string }[] }).changes;
    assert.ok(changes.some((c) => c.table === 'tenants' && c.change === 'created' && c.summary.includes('diverged-tenant')), shown.out);
    assert.ok(changes.some((c) => c.table === 'tenants' && c.change === 'deleted' && c.summary.includes('new-master-tenant')), shown.out);
  });

  it('refuses a replica with another HMAC secret, and names the master when pointed at a replica or itself', async () => {
    const { root, master: n1, replicas } = await cluster('mistakes', ['n2']);
    const [n2] = replicas as [ServerProcess];
    const other = await startNode('n3', root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: n1.url, NEBULAGC_HMAC_SECRET: 'another-hmac-secret-0123456789abcdef0123456789' });
    nodes.push(other);
    assert.ok(await waitUntil(() => /another NEBULAGC_HMAC_SECRET/.test(other.output()), 10_000), other.output());
    assert.match(n1.output(), /refused a replica with another NEBULAGC_HMAC_SECRET/);
    assert.equal((await health(other)).ha_state, 'replica.bootstrapping', 'it never took a copy');

    const viaReplica = await startNode('n4', root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: n2.url });
    nodes.push(viaReplica);
    assert.ok(await waitUntil(async () => (await health(viaReplica)).ha_state === 'replica.following', 15_000), viaReplica.output());
    assert.match(viaReplica.output(), new RegExp(`is not the master \\(replica.following\\); following the master it names, ${n1.url.replace(/\./g, '\\.')}`));

    const port = await freePort();
    const selfAgain = await startNode('n5', root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: `http://127.0.0.1:${port}` }, port);
    nodes.push(selfAgain);
    assert.ok(await waitUntil(() => /points at this node itself/.test(selfAgain.output()), 10_000), selfAgain.output());
  });

  it('a master that hears of a higher epoch fences itself; a replica that has seen one refuses the stale master', async () => {
    const { master: n1 } = await cluster('epochs', []);
    assert.ok(await isMaster(n1));
    const auth = { authorization: `Bearer ${REPLICATION_SECRET}` };
    const pos = (await health(n1)).position as { epoch: number; txid: number; checksum: string };
    const q = new URLSearchParams({ from: String(pos.txid), epoch: String(pos.epoch), checksum: pos.checksum, seen_epoch: String(pos.epoch + 5), replica_id: 'peer', format: '3' });
    const res = await call(n1.url, 'GET', `/internal/v1/replication/stream?${q}`, { headers: auth });
    assert.notEqual(res.status, 200);
    assert.equal((await call(n1.url, 'GET', '/health/master')).status, 503, 'fenced at once');
    const w = await call(n1.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'after-fence' } });
    assert.equal(w.status, 503);
    assert.equal(w.body.code, 'NOT_MASTER');
    assert.equal(w.headers.get('retry-after'), '1');
    assert.equal((await health(n1)).ha_state, 'master.fenced');
    assert.equal(await metric(n1, /^nebulagc_ha_state_transitions_total\{from_state="master.serving",to_state="master.fenced"\}/), 1);
    // A restart does not unfence it: the newer epoch is on disk.
    await n1.stop('SIGINT');
    const again = await n1.restart();
    nodes.push(again);
    assert.ok(await waitUntil(async () => (await health(again)).ha_state === 'master.fenced', 10_000), again.output());
    assert.equal((await call(again.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: 'after-restart' } })).status, 503);
  });

  it('SIGTERM on a master hands over to a caught-up replica first: no acknowledged write lost; restarted, it follows', async () => {
    const { root, master: n1, replicas } = await cluster('sigterm', ['n2', 'n3']);
    const load = new WriteLoad([n1.url, ...replicas.map((r) => r.url)], 'term');
    load.start();
    await waitUntil(() => load.acks.length >= 30, 20_000);
    await n1.stop('SIGTERM');
    assert.equal(n1.child.exitCode, 0, n1.output().slice(-2000));
    assert.match(n1.output(), /switchover done/);
    const leaders = await Promise.all(replicas.map(async (r) => (await call(r.url, 'GET', '/cluster/leader', { headers: op })).body.url as string));
    assert.equal(new Set(leaders).size, 1, `both replicas name the same master: ${leaders.join(', ')}`);
    const nm = replicas.find((r) => r.url === leaders[0])!;
    const other = replicas.find((r) => r !== nm)!;
    assert.ok(nm, `the new master is one of the replicas: ${leaders[0]}`);
    assert.ok(await isMaster(nm));
    assert.ok(await waitUntil(() => load.acks.filter((a) => a.origin === nm.url).length >= 20, 20_000), 'writes continue on the new master');
    const acks = await load.stop();
    const head = (await health(nm)).position.txid as number;
    assert.ok(await waitUntil(async () => (await health(other)).position?.txid === head, 10_000), 'the other replica follows the new master');
    for (const n of [nm, other]) {
      const names = tenantNames(n);
      assert.deepEqual(acks.filter((a) => !names.has(a.name)), [], `${n.name} holds every acknowledged write`);
    }
    // Restarted with its static NEBULAGC_HA_MODE=master, n1 must not become a second master.
    const n1b = await n1.restart();
    nodes.push(n1b);
    assert.ok(await waitUntil(async () => (await health(n1b)).ha_state === 'replica.following', 15_000), n1b.output());
    assert.ok(!(await isMaster(n1b)));
    assert.match(n1b.output(), /following it instead of starting a second master/);
    assert.ok(root);
  });

  it('DELETE /cluster/peers keeps NEBULAGC_MIN_REPLICAS connected; POST /cluster/snapshot writes a consistent copy', async () => {
    const dir = clusterDir('peers');
    roots.push(dir);
    const n1 = await startNode('n1', dir.root, { NEBULAGC_HA_MODE: 'master', NEBULAGC_MIN_REPLICAS: '1' });
    nodes.push(n1);
    const n2 = await startNode('n2', dir.root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: n1.url });
    nodes.push(n2);
    assert.ok(await waitUntil(async () => (await health(n1)).replicas === 1, 15_000));
    const refused = await call(n1.url, 'DELETE', '/cluster/peers/n2', { headers: op });
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.code, 'MIN_REPLICAS');
    assert.equal((await call(n1.url, 'DELETE', '/cluster/peers/nobody', { headers: op })).status, 404);
    await n2.stop();
    assert.ok(await waitUntil(async () => (await health(n1)).replicas === 0, 10_000));
    const forgotten = await call(n1.url, 'DELETE', '/cluster/peers/n2', { headers: op });
    assert.equal(forgotten.status, 200, 'a disconnected replica can be forgotten: the connected count stays as it is');
    const peers = await call(n1.url, 'GET', '/cluster/peers', { headers: op });
    assert.deepEqual(peers.body.peers.map((p: { id: string }) => p.id), ['n1']);
    for (let i = 0; i < 5; i++) assert.equal((await call(n1.url, 'POST', '/api/v1/tenants', { headers: op, json: { name: `s-${i}` } })).status, 201);
    const snap = await call(n1.url, 'POST', '/cluster/snapshot', { headers: op, json: {} });
    assert.equal(snap.status, 200, JSON.stringify(snap.body));
    const pos = (await health(n1)).position;
    assert.equal(snap.body.position.txid, pos.txid);
    assert.equal(snap.body.position.checksum, pos.checksum, 'the copy is byte for byte the database at that position');
    const copy = new Database(snap.body.path, { readonly: true });
    try {
      assert.equal((copy.prepare('PRAGMA integrity_check').get() as { integrity_check: string }).integrity_check, 'ok');
      assert.equal((copy.prepare("SELECT count(*) AS n FROM tenants WHERE name LIKE 's-%'").get() as { n: number }).n, 5);
    } finally {
      copy.close();
    }
  });

  it('a replica that has seen a newer epoch refuses a stale master, and the master fences itself', async () => {
    const { root, master: n1 } = await cluster('stale', []);
    const stale = path.join(root, 'n9', 'nebulagc.db-replication');
    mkdirSync(stale, { recursive: true });
    writeFileSync(path.join(stale, 'timeline.json'), JSON.stringify({ role: 'replica', highest_seen: 7, history: [] }));
    const n9 = await startNode('n9', root, { NEBULAGC_HA_MODE: 'replica', NEBULAGC_MASTER_URL: n1.url });
    nodes.push(n9);
    assert.ok(await waitUntil(() => /but epoch 7 exists: refused/.test(n9.output()), 10_000), n9.output());
    assert.equal((await health(n9)).ha_state, 'replica.bootstrapping', 'it took nothing from the stale master');
    assert.equal((await health(n1)).ha_state, 'master.fenced');
  });

  it('the promotion gate names the gap', () => {
    const at = { epoch: 2, txid: 20, checksum: 'a'.repeat(16) };
    const heard = { epoch: 2, txid: 30, checksum: 'b'.repeat(16) };
    const refusal = promotionRefusal(at, heard);
    assert.equal(refusal?.code, 'NOT_CAUGHT_UP');
    assert.match(refusal!.message, /10 transaction\(s\) behind/);
    assert.equal((refusal!.details as { gap: number }).gap, 10);
    assert.equal(promotionRefusal(heard, heard), undefined);
    assert.equal(promotionRefusal(undefined, heard)?.code, 'NOT_CAUGHT_UP');
  });
});

