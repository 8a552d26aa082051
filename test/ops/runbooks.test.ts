/**
 * ops/runbooks against a real three-node auto-mode cluster on a real etcd (127.0.0.1): the
 * cluster check with a node killed and back; a rolling update whose command really restarts
 * each server process (the command asks this test, which owns the processes, through request
 * files) under a write load; its rerun and its stop on a node that did not reach the version;
 * maintenance of the master; and the refusals, after which nothing was done.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { VERSION } from '../../server/src/version.js';
import { masterOf, masterWatch, startAutoCluster, type AutoCluster } from '../helpers/auto-cluster.js';
import { waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd, type EtcdServer } from '../helpers/etcd.js';
import { health, isMaster, tenantNames } from '../helpers/probes.js';
import { TEST_ADMIN_TOKEN } from '../helpers/server.js';
import { WriteLoad } from '../helpers/write-load.js';

const RUNBOOKS = fileURLToPath(new URL('../../../ops/runbooks/', import.meta.url));
const NAMES = ['n1', 'n2', 'n3'];

let etcd: EtcdServer;
let cluster: AutoCluster;
/** The live process of each node, by name: a restart replaces it. */
const current = new Map<string, ServerProcess>();
const work = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-runbooks-'));
const ctlDir = path.join(work, 'ctl');
const ctl = path.join(work, 'ctl.sh');

interface Action {
  action: 'restart' | 'stop' | 'start';
  name: string;
  /** Whether the node answered /health/master 200 when the command reached it. */
  wasMaster: boolean;
}
const actions: Action[] = [];
let serving = true;

/**
 * The runbooks' commands run `ctl.sh ACTION NODE-OR-URL`: it leaves a request file and waits
 * for this test to act on the process it owns and answer with an exit status.
 */
async function serveRequests(): Promise<void> {
  while (serving) {
    for (const file of readdirSync(ctlDir).filter((f) => f.endsWith('.req')).sort()) {
      const [action, target] = readFileSync(path.join(ctlDir, file), 'utf8').trim().split(' ') as [Action['action'], string];
      const node = [...current.values()].find((n) => n.name === target || n.url === target);
      let status = 0;
      try {
        assert.ok(node, `no node ${target}`);
        actions.push({ action, name: node.name, wasMaster: action !== 'start' && (await isMaster(node).catch(() => false)) });
        if (action !== 'start') await node.stop('SIGTERM');
        if (action !== 'stop') current.set(node.name, await cluster.restart(node));
      } catch (err) {
        process.stderr.write(`ctl ${action} ${target}: ${(err as Error).message}\n`);
        status = 1;
      }
      rmSync(path.join(ctlDir, file));
      writeFileSync(path.join(ctlDir, file.replace(/\.req$/, '.done')), String(status));
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
let requests: Promise<void> | undefined;

before(async () => {
  mkdirSync(ctlDir);
  writeFileSync(
    ctl,
    `#!/bin/bash
set -euo pipefail
req="${ctlDir}/$(date +%s%N)-$$"
printf '%s\\n' "$*" >"$req.tmp"
mv "$req.tmp" "$req.req"
for _ in $(seq 1 1200); do
  if [ -f "$req.done" ]; then exit "$(cat "$req.done")"; fi
  sleep 0.05
done
echo "ctl.sh: the test did not answer" >&2
exit 124
`,
  );
  chmodSync(ctl, 0o755);
  etcd = await startEtcd();
  cluster = await startAutoCluster('runbooks', { kind: 'etcd', endpoints: etcd.endpoint }, { names: NAMES });
  for (const m of cluster.members) current.set(m.name, m);
  requests = serveRequests();
});

after(async () => {
  serving = false;
  await requests;
  await cluster?.remove();
  await etcd?.stop();
  rmSync(work, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a runbook with the operator token in its environment, as an operator would. */
function run(script: string, args: string[], env: Record<string, string> = { NEBULAGC_OPERATOR_TOKEN: TEST_ADMIN_TOKEN }): Promise<Run> {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
  const child = spawn(path.join(RUNBOOKS, script), args, { env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const kill = setTimeout(() => child.kill('SIGKILL'), 120_000);
  return new Promise((resolve) =>
    child.once('exit', (code) => {
      clearTimeout(kill);
      resolve({ code, stdout, stderr });
    }),
  );
}
const show = (r: Run): string => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
const nodes = (): ServerProcess[] => NAMES.map((n) => current.get(n)!);
const urls = (): string[] => nodes().map((n) => n.url);
const master = async (): Promise<ServerProcess> => {
  const m = await masterOf(nodes());
  assert.ok(m, 'a serving master');
  return m;
};
const healthyAgain = (): Promise<boolean> => waitUntil(async () => (await run('cluster-check', urls())).code === 0, 30_000, 500);

describe('ops/runbooks on a three-node auto cluster', { timeout: 240_000 }, () => {
  it('--help prints the usage and exits 0; a usage error exits 2', async () => {
    for (const script of ['cluster-check', 'rolling-update', 'maintenance']) {
      const r = await run(script, ['--help']);
      assert.equal(r.code, 0, show(r));
      assert.match(r.stdout, new RegExp(`^Usage: ${script} `));
      assert.match(r.stdout, /--token-file/);
    }
    assert.equal((await run('rolling-update', urls())).code, 2, '--update-cmd is required');
    assert.equal((await run('maintenance', [])).code, 2, 'begin or end');
    assert.equal((await run('cluster-check', ['--bogus'])).code, 2);
    assert.deepEqual(actions, []);
  });

  it('cluster-check prints every node with its role, epoch, position, lag and the lock holder, and exits 0', async () => {
    const m = await master();
    const tokenFile = path.join(work, 'token');
    writeFileSync(tokenFile, `${TEST_ADMIN_TOKEN}\n`, { mode: 0o600 });
    const r = await run('cluster-check', ['--token-file', tokenFile, ...urls()], {});
    assert.equal(r.code, 0, show(r));
    const lines = r.stdout.split('\n');
    assert.deepEqual(lines[0]!.split(/\s+/), ['NODE', 'URL', 'STATE', 'EPOCH', 'POSITION', 'LAG_MS', 'LAG_TX', 'LOCK_HOLDER', 'VERSION']);
    const epoch = (await health(m)).epoch as number;
    for (const n of nodes()) {
      const row = lines.find((l) => l.startsWith(`${n.name} `))?.split(/\s+/);
      assert.ok(row, `a row for ${n.name}:\n${r.stdout}`);
      assert.equal(row[1], n.url);
      assert.equal(row[2], n === m ? 'master.serving' : 'replica.following');
      assert.equal(row[3], String(epoch));
      assert.match(row[4]!, /^\d+\/\d+$/);
      assert.equal(row[7], m.name, 'every node sees the master holding the lock');
      assert.equal(row[8], VERSION);
    }
    assert.match(r.stdout, /^cluster: healthy$/m);

    const j = await run('cluster-check', ['--json', ...urls()]);
    assert.equal(j.code, 0, show(j));
    const out = JSON.parse(j.stdout);
    assert.equal(out.healthy, true);
    assert.equal(out.master.node_id, m.name);
    assert.deepEqual(out.nodes.map((n: { node_id: string }) => n.node_id), NAMES);
    for (const n of out.nodes) assert.equal(n.lock_holder, m.name);
    assert.equal(out.master_view.filter((r: { connected: boolean }) => r.connected).length, 2, 'the master’s view, read with the token');
  });

  it('with a replica killed: cluster-check exits 1 naming it; rolling-update and maintenance refuse and do nothing', async () => {
    const m = await master();
    const [dead, other] = nodes().filter((n) => n !== m) as [ServerProcess, ServerProcess];
    await dead.kill9();
    const r = await run('cluster-check', urls());
    assert.equal(r.code, 1, show(r));
    assert.match(r.stdout, new RegExp(`^\\?\\s+${dead.url}\\s+unreachable`, 'm'));
    assert.match(r.stdout, new RegExp(`^problem: ${dead.url}: no answer$`, 'm'));
    assert.match(r.stdout, /^cluster: UNHEALTHY/m);

    const update = await run('rolling-update', ['--update-cmd', `${ctl} restart {node}`, ...urls()]);
    assert.equal(update.code, 1, show(update));
    assert.match(update.stderr, /refusing to start: cluster-check fails/);
    // Without the dead one, taking the other replica out would leave the master alone.
    const maint = await run('maintenance', ['begin', other.url, '--stop-cmd', `${ctl} stop {url}`]);
    assert.equal(maint.code, 1, show(maint));
    assert.match(maint.stderr, new RegExp(`refusing: without ${other.name}, 0 caught-up replica\\(s\\) would stay in service; 1 needed`));
    assert.deepEqual(actions, [], 'no command ran');
    assert.equal((await master()).name, m.name);
    assert.equal((await health(other)).ha_state, 'replica.following');

    current.set(dead.name, await cluster.restart(dead));
    assert.ok(await healthyAgain(), 'healthy once the replica is back');
  });

  it('rolling-update: the replicas one at a time, one switchover, the old master last; writes go on', async (t) => {
    const m = await master();
    const replicas = nodes().filter((n) => n !== m).map((n) => n.name);
    const load = new WriteLoad([m.url], 'rolling');
    load.start();
    assert.ok(await waitUntil(() => load.acks.length >= 20, 10_000), 'writes flow before the update');
    const watch = masterWatch(() => nodes());
    const r = await run('rolling-update', ['--update-cmd', `${ctl} restart {node}`, '--timeout', '60', ...urls()]);
    const acksAtEnd = load.acks.length;
    assert.ok(await waitUntil(() => load.acks.length >= acksAtEnd + 20, 10_000), 'writes flow after the update');
    const acks = await load.stop();
    const { most, masters } = await watch.stop();
    assert.equal(r.code, 0, show(r));
    for (const line of r.stdout.trimEnd().split('\n')) t.diagnostic(line);
    t.diagnostic(`writes: ${acks.length} acknowledged, ${load.retries.redirects} redirect(s) followed, ${load.retries.unavailable} 503(s) retried`);

    assert.deepEqual(actions.map((a) => `${a.action} ${a.name}`), [...replicas, m.name].map((n) => `restart ${n}`), 'replicas first, the old master last');
    assert.ok(actions.every((a) => !a.wasMaster), 'no node was restarted while it was the master');
    const out = r.stdout;
    const switched = out.indexOf('switching over from');
    assert.ok(switched > out.lastIndexOf('updating replica') && switched < out.indexOf('updating the old master'), out);
    assert.equal(masters.length, 2, `the master changed exactly once: ${masters.join(' -> ')}`);
    assert.equal(masters[0], m.name);
    assert.ok(replicas.includes(masters[1]!));
    assert.equal(most, 1, 'never two masters at once');
    assert.match(out, /^cluster: healthy$/m);

    assert.equal(load.retries.errors, 0, 'no write failed to connect');
    const names = tenantNames((await master()));
    assert.deepEqual(acks.filter((a) => !names.has(a.name)), [], 'every acknowledged write is on the new master');
  });

  it('rolling-update again: at --version of the running release every node is skipped; at another version it stops after the first replica', async () => {
    const before = actions.length;
    const m = await master();
    const same = await run('rolling-update', ['--update-cmd', `${ctl} restart {node}`, '--version', VERSION, ...urls()]);
    assert.equal(same.code, 0, show(same));
    assert.equal((same.stdout.match(/already runs/g) ?? []).length, 3, same.stdout);
    assert.equal(actions.length, before, 'nothing restarted');

    const other = await run('rolling-update', ['--update-cmd', `${ctl} restart {node}`, '--version', '99.0.0', '--timeout', '60', ...urls()]);
    assert.equal(other.code, 1, show(other));
    assert.match(other.stderr, new RegExp(`runs ${VERSION.replace(/\./g, '\\.')} after the update, not 99\\.0\\.0; stopping here`));
    assert.equal(actions.length, before + 1, 'one node restarted');
    assert.notEqual(actions.at(-1)!.name, m.name);
    assert.equal(actions.at(-1)!.wasMaster, false);
    assert.equal((await master()).name, m.name, 'no switchover');
    assert.ok(await healthyAgain());
  });

  it('maintenance of the master: begin switches over, then stops it; end starts it and waits until it follows; both rerun as no-ops', async () => {
    const m = await master();
    const stopCmd = ['--stop-cmd', `${ctl} stop {url}`];
    const startCmd = ['--start-cmd', `${ctl} start {url}`];
    const before = actions.length;
    const begin = await run('maintenance', ['begin', m.url, ...stopCmd, '--timeout', '60']);
    assert.equal(begin.code, 0, show(begin));
    assert.ok(begin.stdout.indexOf('switching over to') >= 0 && begin.stdout.indexOf('switching over to') < begin.stdout.indexOf('running:'), begin.stdout);
    assert.deepEqual(actions.slice(before), [{ action: 'stop', name: m.name, wasMaster: false }]);
    const next = await masterOf(nodes().filter((n) => n !== m));
    assert.ok(next, 'another node is the master');

    const again = await run('maintenance', ['begin', m.url, ...stopCmd]);
    assert.equal(again.code, 0, show(again));
    assert.match(again.stdout, /does not answer: already out of service, nothing to do/);
    assert.equal(actions.length, before + 1);

    const end = await run('maintenance', ['end', m.url, ...startCmd, '--timeout', '60']);
    assert.equal(end.code, 0, show(end));
    assert.deepEqual(actions.slice(before + 1), [{ action: 'start', name: m.name, wasMaster: false }]);
    assert.match(end.stdout, new RegExp(`${m.name} is back in service: following ${next.url}, caught up`));
    assert.equal((await health(current.get(m.name)!)).ha_state, 'replica.following');

    const endAgain = await run('maintenance', ['end', m.url, ...startCmd]);
    assert.equal(endAgain.code, 0, show(endAgain));
    assert.match(endAgain.stdout, /already in service/);
    assert.equal(actions.length, before + 2);
    assert.equal((await run('cluster-check', urls())).code, 0);
  });
});
