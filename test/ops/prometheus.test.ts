/**
 * ops/prometheus and ops/grafana against the real tools (Debian's prometheus 2.42 and promtool).
 *
 * Static: `promtool check rules`, `promtool check config` and `promtool test rules` pass, every
 * alert has a unit test where it fires and one where it must not, and the Grafana dashboard is
 * well formed (unique panel ids, every datasource the `datasource` variable, every query scoped to
 * `$job`).
 *
 * Live: a real Prometheus scrapes a three-node auto cluster on a real etcd (TTL 2 s), backing up
 * with managed Litestream to a file replica, every second and evaluates a copy of the rules in
 * which every group runs every second and every `for:` is 1 s (the shipped windows are 15 s to
 * 5 min; the expressions are the shipped ones). Before the kill it sees exactly one master, exactly
 * one node backing up (the master), and no failover or backup-down alert (the replicas' litestream
 * is down by design). After kill -9 of the master its own query API shows a stretch with no master
 * (query_range over the failover at 250 ms steps, so no scrape sample is missed), then exactly one
 * new master, which is then the one node backing up; NebulaGCFailover fires,
 * NebulaGCReplicasOffline fires on the new master only and NebulaGCNodeDown on the dead one. Then,
 * under a light write load (so the new master uploads), every query of every dashboard panel, its
 * variables filled in, must return data from that Prometheus.
 *
 * Bounded in time; Prometheus, the nodes (and their litestream) and etcd are killed and their
 * directories removed.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import YAML from 'yaml';
import { masterOf, startAutoCluster, type AutoCluster } from '../helpers/auto-cluster.js';
import { freePort, waitUntil, type ServerProcess } from '../helpers/cluster.js';
import { startEtcd, type EtcdServer } from '../helpers/etcd.js';
import { TEST_ADMIN_TOKEN } from '../helpers/server.js';
import { WriteLoad } from '../helpers/write-load.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const PROM_DIR = path.join(ROOT, 'ops/prometheus');
const RULES = path.join(PROM_DIR, 'nebulagc-rules.yml');
const TESTS_DIR = path.join(PROM_DIR, 'tests');
const DASHBOARD = path.join(ROOT, 'ops/grafana/nebulagc.json');
const JOB = 'nebulagc-test';
/** The HA guide's alerts made true to our metrics, and the ones it lacks (issue 20, part 5). */
const EXPECTED_ALERTS = [
  'NebulaGCNoMaster',
  'NebulaGCSplitBrain',
  'NebulaGCHeartbeatFailures',
  'NebulaGCReplicationLagHigh',
  'NebulaGCReplicasOffline',
  'NebulaGCFailover',
  'NebulaGCFrequentFailovers',
  'NebulaGCMasterFenced',
  'NebulaGCSyncDegraded',
  'NebulaGCQuarantine',
  'NebulaGCCoordinatorDown',
  'NebulaGCLockRenewalErrors',
  'NebulaGCNodeDown',
  // Managed Litestream (issue 21).
  'NebulaGCBackupDown',
  'NebulaGCBackupStale',
  'NebulaGCBackupErrors',
];

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleFile {
  groups: { name: string; interval?: string; rules: Rule[] }[];
}
interface Target {
  expr: string;
  refId: string;
  datasource?: { type: string; uid: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: Target[];
  panels?: Panel[];
}

const rules = (): RuleFile => YAML.parse(readFileSync(RULES, 'utf8')) as RuleFile;
const alerts = (): Rule[] => rules().groups.flatMap((g) => g.rules.filter((r) => r.alert !== undefined));
const testFiles = (): string[] => readdirSync(TESTS_DIR).filter((f) => f.endsWith('.test.yml')).map((f) => path.join(TESTS_DIR, f));
/** The test file named after an alert: NebulaGCBackupStale -> backup-stale.test.yml. */
const testFileOf = (alert: string): string => `${alert.replace(/^NebulaGC/, '').replace(/(?<=[a-z])(?=[A-Z])/g, '-').toLowerCase()}.test.yml`;

function promtool(...args: string[]): { code: number | null; out: string } {
  const r = spawnSync('promtool', args, { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

/** Every panel, those inside rows included. */
function panelsOf(dashboard: { panels: Panel[] }): Panel[] {
  return dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

describe('ops/prometheus: promtool', () => {
  it('check rules passes and finds every rule of the file', () => {
    const r = promtool('check', 'rules', RULES);
    assert.equal(r.code, 0, r.out);
    const count = rules().groups.reduce((n, g) => n + g.rules.length, 0);
    assert.match(r.out, new RegExp(`SUCCESS: ${count} rules found`));
  });

  it('check config passes on the example scrape config, which loads the rules', () => {
    const r = promtool('check', 'config', path.join(PROM_DIR, 'prometheus.yml'));
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /SUCCESS: 1 rule files found/);
    const config = YAML.parse(readFileSync(path.join(PROM_DIR, 'prometheus.yml'), 'utf8'));
    const job = config.scrape_configs.find((j: { job_name: string }) => /^nebulagc/.test(j.job_name));
    assert.ok(job, 'a scrape job named so that the rules select it (job=~"nebulagc.*")');
    assert.equal(job.scrape_interval, '5s');
  });

  it('every alert has for, a severity, a summary, a description and a runbook in docs/OPERATIONS.md', () => {
    const all = alerts();
    assert.deepEqual(all.map((a) => a.alert).sort(), [...EXPECTED_ALERTS].sort());
    for (const a of all) {
      assert.ok(a.for !== undefined, `${a.alert}: for`);
      assert.match(a.labels?.severity ?? '', /^(critical|warning)$/, `${a.alert}: severity`);
      assert.ok(a.annotations?.summary && a.annotations.description, `${a.alert}: summary and description`);
      assert.equal(a.annotations?.runbook, `docs/OPERATIONS.md#${a.alert!.toLowerCase()}`, `${a.alert}: runbook`);
    }
  });

  it('has one test file per alert, named after it', () => {
    const files = testFiles().map((f) => path.basename(f)).sort();
    assert.deepEqual(files, alerts().map((a) => testFileOf(a.alert!)).sort());
  });

  it('test rules passes, with a case where each alert fires and one where it must not', () => {
    const files = testFiles();
    const r = promtool('test', 'rules', ...files);
    assert.equal(r.code, 0, r.out);
    const cases = new Map<string, { fires: boolean; quiet: boolean }>();
    for (const f of files) {
      const suite = YAML.parse(readFileSync(f, 'utf8')) as { tests: { alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[] }[] };
      for (const t of suite.tests.flatMap((s) => s.alert_rule_test ?? [])) {
        const c = cases.get(t.alertname) ?? { fires: false, quiet: false };
        if ((t.exp_alerts ?? []).length > 0) c.fires = true;
        else c.quiet = true;
        cases.set(t.alertname, c);
      }
    }
    for (const a of alerts()) {
      assert.ok(cases.get(a.alert!)?.fires, `a unit test where ${a.alert} fires`);
      assert.ok(cases.get(a.alert!)?.quiet, `a unit test where ${a.alert} must not fire`);
    }
  });
});

describe('ops/grafana: the dashboard', () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { schemaVersion: number; panels: Panel[]; templating: { list: any[] } };

  it('has unique panel ids, a datasource variable used everywhere and a job variable every query uses', () => {
    assert.ok(dashboard.schemaVersion >= 36, `schemaVersion ${dashboard.schemaVersion}`);
    const panels = panelsOf(dashboard);
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, `duplicate panel ids in ${ids.join(',')}`);
    const vars = new Map(dashboard.templating.list.map((v) => [v.name as string, v]));
    assert.equal(vars.get('datasource')?.type, 'datasource');
    assert.equal(vars.get('datasource')?.query, 'prometheus');
    assert.equal(vars.get('job')?.datasource?.uid, '${datasource}');
    const queried = panels.filter((p) => p.type !== 'row');
    assert.ok(queried.length >= 15, `${queried.length} panels`);
    for (const p of queried) {
      assert.equal(p.datasource?.uid, '${datasource}', `${p.title}: datasource`);
      assert.ok((p.targets ?? []).length > 0, `${p.title}: no query`);
      for (const t of p.targets!) {
        assert.equal(t.datasource?.uid ?? p.datasource.uid, '${datasource}', `${p.title}/${t.refId}: datasource`);
        assert.match(t.expr, /job="\$job"/, `${p.title}/${t.refId}: scoped to $job`);
      }
    }
  });
});

/** A running Prometheus: its URL, its output for failure messages, and a way to stop it. */
interface Prometheus {
  url: string;
  output(): string;
  stop(): Promise<void>;
}

/** The shipped rules with every group evaluated every second and every `for:` at most 1 s. */
function fastRules(): string {
  const file = rules();
  for (const g of file.groups) {
    g.interval = '1s';
    for (const r of g.rules) if (r.for !== undefined && r.for !== '0s') r.for = '1s';
  }
  return YAML.stringify(file);
}

async function startPrometheus(dir: string, targets: ServerProcess[]): Promise<Prometheus> {
  writeFileSync(path.join(dir, 'rules.yml'), fastRules());
  const config = {
    global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
    rule_files: [path.join(dir, 'rules.yml')],
    scrape_configs: [{ job_name: JOB, static_configs: [{ targets: targets.map((n) => `127.0.0.1:${n.port}`) }] }],
  };
  writeFileSync(path.join(dir, 'prometheus.yml'), YAML.stringify(config));
  const port = await freePort();
  const child: ChildProcess = spawn(
    'prometheus',
    [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  const keep = (b: Buffer): void => void (out = (out + b.toString()).slice(-20_000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const url = `http://127.0.0.1:${port}`;
  const prom: Prometheus = {
    url,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
  if (!(await waitUntil(async () => (await fetch(`${url}/-/ready`)).ok, 20_000, 100))) {
    await prom.stop();
    throw new Error(`prometheus did not become ready:\n${out}`);
  }
  return prom;
}

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

async function api<T>(prom: Prometheus, route: string, params: Record<string, string> = {}): Promise<T> {
  const res = await fetch(`${prom.url}${route}?${new URLSearchParams(params)}`);
  const body = (await res.json()) as { status: string; data: T; error?: string };
  if (body.status !== 'success') throw new Error(`${route} ${JSON.stringify(params)}: ${body.error}`);
  return body.data;
}

const query = async (prom: Prometheus, q: string): Promise<Sample[]> => (await api<{ result: Sample[] }>(prom, '/api/v1/query', { query: q })).result;

interface Alert {
  labels: Record<string, string>;
  state: 'pending' | 'firing';
}
const alertsNamed = async (prom: Prometheus, name: string): Promise<Alert[]> =>
  (await api<{ alerts: Alert[] }>(prom, '/api/v1/alerts')).alerts.filter((a) => a.labels.alertname === name && a.labels.job === JOB);

/** Dashboard variables as the test fills them: 1 s scrapes, so a 10 s rate window holds 10 samples. */
function substitute(expr: string): string {
  return expr.replaceAll('$__rate_interval', '10s').replaceAll('$__interval', '1s').replaceAll('$__range', '5m').replaceAll('$job', JOB);
}

describe('a real Prometheus scraping a three-node auto cluster through a kill -9 failover', { timeout: 150_000 }, () => {
  let etcd: EtcdServer | undefined;
  let cluster: AutoCluster | undefined;
  let prom: Prometheus | undefined;
  let dir: string | undefined;
  let load: WriteLoad | undefined;
  let staleReads: { stop(): Promise<void> } | undefined;
  const instance = (n: ServerProcess): string => `127.0.0.1:${n.port}`;
  /** The instances Prometheus last saw with litestream running. */
  const backingUp = async (p: Prometheus): Promise<string[]> => (await query(p, `nebulagc_backup_up{job="${JOB}"} == 1`)).map((s) => s.metric.instance!);

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-prometheus-'));
    etcd = await startEtcd();
    cluster = await startAutoCluster('prometheus', { kind: 'etcd', endpoints: etcd.endpoint }, {
      env: {
        // Semi-synchronous writes, so the sync-wait panel has data; stale reads answer 503 after 20 ms, so the 5xx panel has some.
        NEBULAGC_SYNC_REPLICAS: '1',
        NEBULAGC_SYNC_MODE: 'degrade',
        NEBULAGC_MIN_TXID_WAIT_MS: '20',
        // One backup for the cluster, written by whichever node is the master, so the backup panels have data.
        NEBULAGC_LITESTREAM_URL: `file://${path.join(dir, 'backup')}`,
        NEBULAGC_LITESTREAM_SYNC_INTERVAL: '200ms',
      },
    });
    prom = await startPrometheus(dir, cluster.members);
  });

  after(async () => {
    await staleReads?.stop();
    await load?.stop();
    await prom?.stop();
    await cluster?.remove();
    await etcd?.stop();
    // The killed nodes' litestream may still be finishing a write in dir/backup.
    if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
  });

  it('scrapes all three nodes and sees exactly one master, the one node backing up, with no failover or backup alert', async () => {
    const p = prom!;
    const up = await waitUntil(async () => {
      const { activeTargets } = await api<{ activeTargets: { health: string }[] }>(p, '/api/v1/targets');
      return activeTargets.length === 3 && activeTargets.every((t) => t.health === 'up');
    }, 20_000, 200);
    assert.ok(up, `every target up:\n${p.output()}`);
    const master = (await masterOf(cluster!.members))!;
    const masters = await query(p, `nebulagc_ha_is_master{job="${JOB}"} == 1`);
    assert.deepEqual(masters.map((s) => s.metric.instance), [instance(master)]);
    assert.equal(Number((await query(p, `sum(nebulagc_ha_is_master{job="${JOB}"})`))[0]?.value[1]), 1);
    assert.ok(await waitUntil(async () => (await backingUp(p)).length > 0, 10_000, 200), 'the master starts litestream');
    assert.deepEqual(await backingUp(p), [instance(master)], 'litestream runs on the master only');
    assert.equal((await query(p, `nebulagc_backup_up{job="${JOB}"} == 0`)).length, 2, 'the replicas report theirs down');
    // Several rule evaluations on the settled cluster: its first epoch is no failover, and the
    // replicas' litestream is down by design.
    await new Promise((r) => setTimeout(r, 3000));
    assert.deepEqual(await alertsNamed(p, 'NebulaGCFailover'), []);
    assert.deepEqual(await alertsNamed(p, 'NebulaGCReplicasOffline'), []);
    assert.deepEqual(await alertsNamed(p, 'NebulaGCBackupDown'), []);
    assert.deepEqual(await backingUp(p), [instance(master)], 'still the master only');
  });

  it('after kill -9 of the master: no master for a while, then exactly one new master, and NebulaGCFailover firing', async (t) => {
    const p = prom!;
    const c = cluster!;
    const old = (await masterOf(c.members))!;
    load = new WriteLoad(c.members.map((n) => n.url), 'prom', 100);
    load.start();
    staleReads = readStaleLoop(() => c.members.filter((n) => n !== old && n.child.exitCode === null));
    await new Promise((r) => setTimeout(r, 2000));
    const killedAt = Date.now() / 1000;
    await old.kill9();

    const failover = await waitUntil(async () => (await alertsNamed(p, 'NebulaGCFailover')).some((a) => a.state === 'firing'), 30_000, 250);
    assert.ok(failover, `NebulaGCFailover firing:\n${JSON.stringify(await api(p, '/api/v1/alerts'))}\n${p.output()}`);
    const settled = await waitUntil(async () => (await query(p, `nebulagc_ha_is_master{job="${JOB}"} == 1`)).length === 1, 15_000, 250);
    assert.ok(settled, 'one node takes writes again');
    const [now] = await query(p, `nebulagc_ha_is_master{job="${JOB}"} == 1`);
    const next = (await masterOf(c.members))!;
    assert.notEqual(now!.metric.instance, instance(old), 'the new master is another node');
    assert.equal(now!.metric.instance, instance(next), 'Prometheus names the node answering /health/master');
    const handedOver = await waitUntil(async () => (await backingUp(p)).join() === instance(next), 15_000, 250);
    assert.ok(handedOver, `the new master, and it only, backs up: ${(await backingUp(p)).join() || 'none'}`);

    // The number of masters as the TSDB saw it, at steps finer than the 1 s scrapes.
    const range = await api<{ result: { values: [number, string][] }[] }>(p, '/api/v1/query_range', {
      query: `sum(nebulagc_ha_is_master{job="${JOB}"})`,
      start: String(killedAt - 3),
      end: String(Date.now() / 1000),
      step: '0.25',
    });
    const counts = range.result[0]!.values.map(([, v]) => Number(v));
    const zeros = counts.filter((v) => v === 0).length;
    t.diagnostic(`masters seen by Prometheus from 3 s before the kill, every 250 ms: ${counts.join('')}; no master for ~${zeros * 0.25} s`);
    assert.equal(counts[0], 1, 'one master before the kill');
    assert.ok(zeros > 0, 'a stretch with no master');
    assert.equal(counts.at(-1), 1, 'one master after');
    assert.ok(Math.max(...counts) <= 1, 'never two');
    const firstZero = counts.indexOf(0);
    assert.ok(counts.slice(0, firstZero).every((v) => v === 1) && counts.slice(counts.lastIndexOf(0) + 1).every((v) => v === 1), 'one, then none, then one');
    // The same window as the subquery an operator would type.
    const window = await query(p, `min_over_time(sum(nebulagc_ha_is_master{job="${JOB}"})[60s:1s]) == 0`);
    assert.equal(window.length, 1, 'min_over_time over the last minute shows the window');

    const offline = await waitUntil(async () => (await alertsNamed(p, 'NebulaGCReplicasOffline')).some((a) => a.state === 'firing'), 15_000, 250);
    assert.ok(offline, 'the new master has one replica of the two expected');
    assert.deepEqual([...new Set((await alertsNamed(p, 'NebulaGCReplicasOffline')).map((a) => a.labels.instance))], [instance(next)], 'counted on the master only');
    const down = await waitUntil(async () => (await alertsNamed(p, 'NebulaGCNodeDown')).some((a) => a.state === 'firing'), 15_000, 250);
    assert.ok(down, 'NebulaGCNodeDown fires');
    assert.deepEqual((await alertsNamed(p, 'NebulaGCNodeDown')).map((a) => a.labels.instance), [instance(old)]);
    t.diagnostic(`replication stream errors on the survivors: ${(await query(p, `nebulagc_ha_heartbeat_errors_total{job="${JOB}"}`)).map((s) => `${s.metric.instance}=${s.value[1]}`).join(' ')}`);
  });

  it('every query of every dashboard panel returns data', async (t) => {
    const p = prom!;
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] };
    const queries = panelsOf(dashboard).flatMap((panel) => (panel.targets ?? []).map((t) => ({ name: `${panel.title}/${t.refId}`, expr: substitute(t.expr) })));
    for (const q of queries) assert.doesNotMatch(q.expr, /\$/, `${q.name}: a variable left in ${q.expr}`);
    // Rate windows need samples from after the failover: poll until each query has a number.
    const blind = async (): Promise<string[]> => {
      const out: string[] = [];
      for (const q of queries) {
        const result = await query(p, q.expr);
        if (!result.some((s) => Number.isFinite(Number(s.value[1])))) out.push(`${q.name}: ${q.expr} -> ${JSON.stringify(result)}`);
      }
      return out;
    };
    await waitUntil(async () => (await blind()).length === 0, 30_000, 1000);
    assert.deepEqual(await blind(), [], 'panels without data');
    const sizes = await Promise.all(queries.map(async (q) => `${q.name}: ${(await query(p, q.expr)).length}`));
    t.diagnostic(`series per query: ${sizes.join('; ')}`);
  });
});

/** Reads that ask for a transaction no node has: a replica answers 503 STALE_REPLICA after NEBULAGC_MIN_TXID_WAIT_MS. */
function readStaleLoop(replicas: () => ServerProcess[]): { stop(): Promise<void> } {
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const r of replicas()) {
        await fetch(`${r.url}/api/v1/tenants`, { headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'x-nebulagc-min-txid': '1000000000000' } })
          .then((res) => res.arrayBuffer())
          .catch(() => undefined);
      }
      await new Promise((res) => setTimeout(res, 100));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
    },
  };
}
