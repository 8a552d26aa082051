import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../server/src/config.js';
import type { Synchronous } from '../../server/src/db/connection.js';
import { openStore, type OpenedStore } from '../../server/src/db/open-store.js';
import { createLogger } from '../../server/src/log.js';
import { InternalClient } from '../../server/src/replication/wire/internal-client.js';
import { ReplicationMaster } from '../../server/src/replication/master/master.js';
import type { Position } from '../../server/src/replication/wire/record.js';
import { ReplicationReplica } from '../../server/src/replication/replica/replica.js';
import { HttpUpstream } from '../../server/src/replication/wire/http-upstream.js';
import { replicationDir } from '../../server/src/server.js';
import { quietReplicaHooks, replicaIdentity } from '../helpers/replica.js';
import { TEST_ADMIN_TOKEN, TEST_SECRET } from '../helpers/server.js';
import { isEntryPoint } from './entry.js';
import { cpuTime, fmt, killOnExit, printTable, tempDir } from './harness.js';
import { benchWriter, type LoadResult } from './master-load.js';

/*
 * Replication benchmarks (issue 9): capture overhead on the master's write path, commit-to-apply
 * lag (visible and durable) at 1,000 writes/s, keeping up with 10,000 writes/s, and snapshot bootstrap throughput.
 * Parts and sizes come from the environment (defaults keep `npm run bench` to a few minutes):
 *   BENCH_REPLICATION        parts to run, comma-separated: capture,lag,keepup,snapshot (all)
 *   BENCH_CAPTURE_ROUNDS     off/on pairs per synchronous mode (4); BENCH_CAPTURE_SECONDS per run (3)
 *   BENCH_CAPTURE_SYNC       NORMAL,FULL;  BENCH_CAPTURE_MODES  off,on (use "on" alone to profile)
 *   BENCH_LAG_SECONDS        measured seconds at 1,000 writes/s (15); BENCH_LAG_SYNC  FULL,NORMAL
 *   BENCH_KEEPUP_SECONDS     measured seconds at 10,000 writes/s (15; the recorded run used 60)
 *   BENCH_KEEPUP_RATE        the keep-up run's target rate (10000)
 *   BENCH_SNAPSHOT_MB        MiB of blobs in the snapshot database (256; the recorded run used 1024)
 *   BENCH_MASTER_NODE_OPTIONS node flags for the master process, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
 *   BENCH_DEBUG              print the replica's info-level log lines too
 *   NEBULAGC_WAL_CHECKPOINT_BYTES  the master's checkpoint step (the server's default otherwise); likewise
 *   NEBULAGC_REPLICATION_LOG_BYTES, _LOG_MAX_AGE_S, _MEMORY_BYTES  the master's log retention
 * Results and what they mean: docs/BENCHMARKS.md, "Capture overhead", "Replication lag", "Apply throughput" and "Snapshot bootstrap".
 */

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MASTER_LOAD = path.join(DIST, 'test/bench/master-load.js');
const REPLICATION_SECRET = 'bench-replication-secret-0123456789abcdef';
/** The master's settings a bench run may change through the environment (others are fixed). */
const MASTER_TUNING = ['NEBULAGC_WAL_CHECKPOINT_BYTES', 'NEBULAGC_REPLICATION_LOG_BYTES', 'NEBULAGC_REPLICATION_LOG_MAX_AGE_S', 'NEBULAGC_REPLICATION_MEMORY_BYTES'];
const masterTuning = (): Record<string, string> => Object.fromEntries(MASTER_TUNING.filter((k) => process.env[k]).map((k) => [k, process.env[k]!]));

const env = (name: string, fallback: string): string => process.env[name] || fallback;
const envNumber = (name: string, fallback: number): number => {
  const v = Number(env(name, String(fallback)));
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number`);
  return v;
};
const envList = (name: string, fallback: string): string[] =>
  env(name, fallback)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
const syncList = (name: string, fallback: string): Synchronous[] =>
  envList(name, fallback).map((s) => {
    const u = s.toUpperCase();
    if (u !== 'FULL' && u !== 'NORMAL') throw new Error(`${name}: FULL or NORMAL, not ${s}`);
    return u;
  });

const wallNow = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const yieldToLoop = (): Promise<void> => new Promise((r) => setImmediate(r));
const quietLog = createLogger('warn');

// ---------------------------------------------------------------------------------------------
// Clean-up: a crashed or interrupted run must not leave a master burning a core or a 1 GiB
// database in /tmp. The harness kills children on 'exit'; temp dirs go the same way, and
// SIGINT/SIGTERM are turned into an exit so both happen.

const tempDirs = new Set<{ remove(): void }>();
process.once('exit', () => {
  for (const t of tempDirs) t.remove();
});
function benchDir(): { dir: string; remove(): void } {
  const t = tempDir();
  const entry = {
    dir: t.dir,
    remove: () => {
      tempDirs.delete(entry);
      t.remove();
    },
  };
  tempDirs.add(entry);
  return entry;
}
function exitOnSignals(): () => void {
  const onSignal = (signal: NodeJS.Signals): void => {
    console.error(`\n${signal}: cleaning up`);
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

// ---------------------------------------------------------------------------------------------
// Statistics

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}
function summarize(values: number[]): { n: number; p50: number; p99: number; max: number; mean: number } {
  const s = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of s) sum += v;
  return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99), max: s[s.length - 1] ?? NaN, mean: sum / s.length };
}
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** The replication log and checkpoint settings as loadConfig gives them: the server's defaults unless MASTER_TUNING sets them. */
function masterDefaults(synchronous: Synchronous): { log: { maxBytes: number; maxAgeMs: number; memoryBytes: number }; walCheckpointBytes: number } {
  const c = loadConfig({
    NEBULAGC_HA_MODE: 'master',
    NEBULAGC_DB_SYNCHRONOUS: synchronous,
    NEBULAGC_REPLICATION_SECRET: REPLICATION_SECRET,
    NEBULAGC_HMAC_SECRET: TEST_SECRET,
    ...masterTuning(),
  });
  return { log: c.replication.log, walCheckpointBytes: c.replication.walCheckpointBytes };
}

// ---------------------------------------------------------------------------------------------
// 1. Capture overhead

interface CaptureRun {
  replication: boolean;
  rate: number;
  cpuMicros: number;
}

/**
 * Single-row write transactions through `store.writer` for `seconds`, in slices of 5 ms with a
 * turn of the event loop between them (as a server's writes are), so replication's timers
 * (capture, WAL checkpoint, log flush) get to run. The same loop with and without a master.
 */
async function captureRun(synchronous: Synchronous, replication: boolean, seconds: number, warmupSeconds: number): Promise<CaptureRun> {
  const tmp = benchDir();
  let opened: OpenedStore | undefined;
  let master: ReplicationMaster | undefined;
  try {
    const dbPath = path.join(tmp.dir, 'nebulagc.db');
    opened = openStore({ dbPath, synchronous, secret: TEST_SECRET });
    if (replication) {
      // What server.ts does for NEBULAGC_HA_MODE=master: the constructor installs the commit hook.
      master = new ReplicationMaster(opened.store.writer, { dbPath, dir: replicationDir(dbPath), synchronous, ...masterDefaults(synchronous), epoch: 1, history: () => [] }, quietLog);
      master.start();
    }
    const write = benchWriter(opened.store.writer);
    const burn = async (s: number): Promise<number> => {
      const end = performance.now() + s * 1000;
      let n = 0;
      for (;;) {
        const now = performance.now();
        if (now >= end) return n;
        const sliceEnd = Math.min(end, now + 5);
        while (performance.now() < sliceEnd) {
          write();
          n++;
        }
        await yieldToLoop();
      }
    };
    await burn(warmupSeconds);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const n = await burn(seconds);
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    return { replication, rate: (n * 1000) / ms, cpuMicros: (cpu.user + cpu.system) / n };
  } finally {
    await master?.close();
    opened?.close();
    tmp.remove();
  }
}

interface CaptureResult {
  synchronous: Synchronous;
  runs: CaptureRun[];
  pairRatios: number[];
  medianRatio: number;
  totalRatio: number;
}

async function captureOverhead(): Promise<CaptureResult[]> {
  const rounds = envNumber('BENCH_CAPTURE_ROUNDS', 4);
  const seconds = envNumber('BENCH_CAPTURE_SECONDS', 3);
  const modes = envList('BENCH_CAPTURE_MODES', 'off,on');
  const results: CaptureResult[] = [];
  for (const synchronous of syncList('BENCH_CAPTURE_SYNC', 'NORMAL,FULL')) {
    const runs: CaptureRun[] = [];
    for (let round = 1; round <= rounds; round++) {
      for (const mode of modes) {
        const r = await captureRun(synchronous, mode === 'on', seconds, 0.5);
        console.log(`  capture ${synchronous} round ${round} ${mode}: ${fmt(r.rate)} writes/s, ${fmt(r.cpuMicros, 1)} µs CPU/write`);
        runs.push(r);
      }
    }
    const off = runs.filter((r) => !r.replication);
    const on = runs.filter((r) => r.replication);
    const pairRatios = on.map((r, i) => (off[i] ? r.rate / off[i]!.rate : NaN)).filter((x) => !Number.isNaN(x));
    const sum = (rs: CaptureRun[]): number => rs.reduce((a, r) => a + r.rate, 0);
    results.push({
      synchronous,
      runs,
      pairRatios,
      medianRatio: pairRatios.length ? median(pairRatios) : NaN,
      totalRatio: off.length && on.length ? sum(on) / on.length / (sum(off) / off.length) : NaN,
    });
  }
  return results;
}

function printCapture(results: CaptureResult[]): void {
  console.log('\nCapture overhead: single-row writes through store.writer, replication off vs on (a ReplicationMaster on the same writer)\n');
  const rows: string[][] = [];
  for (const r of results) {
    const off = r.runs.filter((x) => !x.replication);
    const on = r.runs.filter((x) => x.replication);
    const avg = (rs: CaptureRun[], f: (x: CaptureRun) => number): number => rs.reduce((a, x) => a + f(x), 0) / rs.length;
    rows.push([
      r.synchronous,
      off.map((x) => fmt(x.rate)).join(' / '),
      on.map((x) => fmt(x.rate)).join(' / '),
      off.length ? fmt(avg(off, (x) => x.cpuMicros), 1) : '–',
      on.length ? fmt(avg(on, (x) => x.cpuMicros), 1) : '–',
      r.pairRatios.map((x) => fmt(x, 2)).join(' / '),
      fmt(r.medianRatio, 2),
      fmt(r.totalRatio, 2),
    ]);
  }
  printTable(['sync', 'off writes/s (per round)', 'on writes/s (per round)', 'off µs CPU/w', 'on µs CPU/w', 'on/off per round', 'median', 'mean on/mean off'], rows);
  console.log('Goals: >= 0.85 at NORMAL, >= 0.95 at FULL.');
}

// ---------------------------------------------------------------------------------------------
// The master process (master-load.ts) and the in-process replica

type Reply = { type: string; id?: number } & Record<string, unknown>;

class MasterProcess {
  private nextId = 1;
  /** Keyed by `${type}:${id}` (the ready announcement has no id). */
  private readonly waiting = new Map<string, { resolve(r: Reply): void; reject(e: Error): void }>();
  private readonly exited: Promise<void>;
  private output = '';
  url = '';

  private constructor(readonly child: ChildProcess) {
    killOnExit(child);
    const keep = (chunk: Buffer): void => {
      this.output = (this.output + chunk.toString('utf8')).slice(-4096);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        for (const [key, w] of this.waiting) w.reject(new Error(`master exited (${code ?? signal}) while we waited for ${key}:\n${this.output}`));
        this.waiting.clear();
        resolve();
      }),
    );
    child.on('message', (m: Reply) => {
      if (m.type === 'error') {
        for (const [key, w] of this.waiting) {
          if (key.endsWith(`:${m.id}`)) {
            this.waiting.delete(key);
            w.reject(new Error(`master: ${String(m.message)}`));
          }
        }
        return;
      }
      const key = `${m.type}:${m.id ?? ''}`;
      const w = this.waiting.get(key);
      this.waiting.delete(key);
      w?.resolve(m);
    });
  }

  static async start(dbPath: string, synchronous: Synchronous, readyTimeoutMs = 20_000): Promise<MasterProcess> {
    const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NEBULAGC_')));
    const child = fork(MASTER_LOAD, [], {
      env: {
        ...inherited,
        NEBULAGC_LISTEN: '127.0.0.1:0',
        NEBULAGC_DB_PATH: dbPath,
        NEBULAGC_HMAC_SECRET: TEST_SECRET,
        NEBULAGC_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
        NEBULAGC_LOG_LEVEL: 'warn',
        NEBULAGC_NODE_ID: 'bench-master',
        NEBULAGC_HA_MODE: 'master',
        NEBULAGC_REPLICATION_SECRET: REPLICATION_SECRET,
        NEBULAGC_DB_SYNCHRONOUS: synchronous,
        ...masterTuning(),
      },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      // Not the parent's flags (a --cpu-prof of the bench would profile the master too).
      execArgv: (process.env.BENCH_MASTER_NODE_OPTIONS ?? '').split(' ').filter(Boolean),
    });
    const m = new MasterProcess(child);
    const ready = m.expect('ready', '');
    const timer = setTimeout(() => child.kill('SIGKILL'), readyTimeoutMs);
    try {
      const r = await ready;
      m.url = String(r.url);
      return m;
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  private expect(type: string, id: number | string): Promise<Reply> {
    return new Promise((resolve, reject) => this.waiting.set(`${type}:${id}`, { resolve, reject }));
  }

  request(msg: Record<string, unknown> & { type: string }): Promise<Reply> {
    const id = this.nextId++;
    const p = this.expect(msg.type, id);
    this.child.send({ ...msg, id });
    return p;
  }

  /** Starts a load; `measuring` resolves when the measured part begins, `done` at its end. */
  load(rate: number, seconds: number, warmupSeconds: number): { measuring: Promise<Reply>; done: Promise<LoadResult> } {
    const id = this.nextId++;
    const measuring = this.expect('measuring', id);
    const done = this.expect('done', id) as unknown as Promise<LoadResult>;
    // If the load fails early, `done` rejects too; keep `measuring` from going unhandled.
    measuring.catch(() => undefined);
    this.child.send({ type: 'load', id, rate, seconds, warmupSeconds });
    return { measuring, done };
  }

  /** Offset of the master's clock from ours (ms, master minus ours), from the ping with the shortest round trip. */
  async clockOffset(pings = 50): Promise<{ offsetMs: number; rttMs: number }> {
    let best = { offsetMs: NaN, rttMs: Infinity };
    for (let i = 0; i < pings; i++) {
      const t0 = wallNow();
      const r = await this.request({ type: 'clock' });
      const t1 = wallNow();
      if (t1 - t0 < best.rttMs) best = { offsetMs: Number(r.t) - (t0 + t1) / 2, rttMs: t1 - t0 };
    }
    return best;
  }

  async position(): Promise<Position> {
    const r = await this.request({ type: 'position' });
    return { epoch: Number(r.epoch), txid: Number(r.txid), checksum: String(r.checksum) };
  }

  get pid(): number {
    return this.child.pid!;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.connected) this.child.send({ type: 'stop' });
    else this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

/**
 * What the bench records of each transaction, by txid: the master's commit time, and our clock
 * when its batch started applying, when readers could see it and when it was durable. Typed
 * arrays, not an object per batch: recording 600,000 transactions as objects grew this
 * process's heap, and its major garbage collections became the replica's longest stalls.
 */
class TxTimes {
  commit: Float64Array;
  received: Float64Array;
  started: Float64Array;
  visible: Float64Array;
  durable: Float64Array;
  /** 1 where a batch ended. */
  batchEnd: Uint8Array;
  /** Where a batch ended, the bytes of its records (as received). */
  batchBytes: Float64Array;

  /**
   * Sized for the run up front: growing mid-run allocated and copied tens of MB in the
   * replica's process, a stall of its own in the figures (at 52 s of a 60 s run at 10,000/s).
   */
  constructor(expectedTxs: number) {
    let size = 1 << 16;
    while (size <= expectedTxs) size *= 2;
    this.commit = new Float64Array(size);
    this.received = new Float64Array(size);
    this.started = new Float64Array(size);
    this.visible = new Float64Array(size);
    this.durable = new Float64Array(size);
    this.batchEnd = new Uint8Array(size);
    this.batchBytes = new Float64Array(size);
  }

  applied(lastTxid: number, commitTimesMs: number[], bytes: number, receivedAt: number, startedAt: number, at: number): void {
    const first = lastTxid - commitTimesMs.length + 1;
    this.reserve(lastTxid);
    for (let i = 0; i < commitTimesMs.length; i++) {
      this.commit[first + i] = commitTimesMs[i]!;
      this.received[first + i] = receivedAt;
      this.started[first + i] = startedAt;
      this.visible[first + i] = at;
    }
    this.batchEnd[lastTxid] = 1;
    this.batchBytes[lastTxid] = bytes;
  }

  madeDurable(lastTxid: number, count: number, at: number): void {
    this.reserve(lastTxid);
    this.durable.fill(at, lastTxid - count + 1, lastTxid + 1);
  }

  private reserve(txid: number): void {
    if (txid < this.commit.length) return;
    let size = this.commit.length;
    while (size <= txid) size *= 2;
    const grow = <T extends Float64Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(size);
      b.set(a);
      return b;
    };
    this.commit = grow(this.commit, (n) => new Float64Array(n));
    this.received = grow(this.received, (n) => new Float64Array(n));
    this.started = grow(this.started, (n) => new Float64Array(n));
    this.visible = grow(this.visible, (n) => new Float64Array(n));
    this.durable = grow(this.durable, (n) => new Float64Array(n));
    this.batchEnd = grow(this.batchEnd, (n) => new Uint8Array(n));
    this.batchBytes = grow(this.batchBytes, (n) => new Float64Array(n));
  }
}

interface Follower {
  replica: ReplicationReplica;
  times: TxTimes;
  streamErrors: number;
  snapshotAt: Promise<number>;
  logLines: Record<string, unknown>[];
  stop(): Promise<void>;
}

/** A ReplicationReplica in this process, following `masterUrl`, with every applied batch recorded. */
function follow(masterUrl: string, dir: string, expectedTxs = 0): Follower {
  const client = new InternalClient({ baseUrl: masterUrl, secret: REPLICATION_SECRET });
  const logLines: Record<string, unknown>[] = [];
  // Info level into memory: the snapshot client logs its own download time.
  const log = createLogger(
    'info',
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString('utf8').split('\n')) {
          if (!line) continue;
          try {
            const o = JSON.parse(line) as Record<string, unknown>;
            logLines.push(o);
            if (process.env.BENCH_DEBUG || (o.level !== 'info' && o.level !== 'debug')) process.stderr.write(`  replica: ${line}\n`);
          } catch {
            // Not JSON: ignore.
          }
        }
        cb();
      },
    }),
  );
  const times = new TxTimes(expectedTxs);
  let snapshotResolve!: (t: number) => void;
  const snapshotAt = new Promise<number>((r) => (snapshotResolve = r));
  const f: Follower = {
    replica: undefined as unknown as ReplicationReplica,
    times,
    streamErrors: 0,
    snapshotAt,
    logLines,
    async stop() {
      await f.replica.stop();
      client.close();
    },
  };
  const dbPath = path.join(dir, 'replica.db');
  f.replica = new ReplicationReplica(
    new HttpUpstream(client),
    { dbPath, dir: replicationDir(dbPath), replicaId: 'bench-replica', advertiseUrl: 'http://127.0.0.1:9', ...replicaIdentity(replicationDir(dbPath)) },
    {
      onCopyChanged: () => undefined,
      onApplied: (pos, txCount, bytes, commitTimesMs) => {
        const at = wallNow();
        if (txCount === 0) snapshotResolve(at);
        else times.applied(pos.txid, commitTimesMs, bytes, batchReceivedAt, applyStartedAt, at);
      },
      onDurable: (pos, commitTimesMs) => {
        if (commitTimesMs.length > 0) times.madeDurable(pos.txid, commitTimesMs.length, wallNow());
      },
      onHeartbeat: () => undefined,
      onStreamError: () => {
        f.streamErrors++;
      },
      ...quietReplicaHooks,
    },
    log,
  );
  // To split the lag into the master's side and the wire (commit to the first bytes of the
  // batch arriving here), the replica's wait (to the start of the batch's apply) and the apply
  // (verify, SQLite write and commit), time the replica's private takeRecords() and
  // applyQueued(). Only the bench does this; without them the split is left out.
  let applyStartedAt = NaN;
  let batchReceivedAt = NaN;
  let pendingReceivedAt = NaN;
  const internals = f.replica as unknown as { applyQueued?: () => void; takeRecords?: (records: Buffer[]) => void };
  if (typeof internals.applyQueued === 'function' && typeof internals.takeRecords === 'function') {
    const apply = internals.applyQueued.bind(f.replica);
    const take = internals.takeRecords.bind(f.replica);
    internals.takeRecords = (records) => {
      if (records.length > 0 && Number.isNaN(pendingReceivedAt)) pendingReceivedAt = wallNow();
      take(records);
    };
    internals.applyQueued = () => {
      applyStartedAt = wallNow();
      batchReceivedAt = pendingReceivedAt;
      pendingReceivedAt = NaN;
      apply();
    };
  }
  return f;
}

async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(2);
  }
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. Lag under a steady write rate

interface LagResult {
  label: string;
  synchronous: Synchronous;
  targetRate: number;
  load: LoadResult;
  clock: { offsetMs: number; rttMs: number };
  txs: number;
  batches: number;
  /** Stream bytes per transaction (records as the replica received them). */
  recordBytesPerTx: number;
  /** Master commit to readers of the replica seeing the transaction. */
  lag: ReturnType<typeof summarize>;
  /** Master commit to the replica having it on disk (pages and position): what it acknowledges. */
  durableLag: ReturnType<typeof summarize>;
  /** Commit to the start of the batch's apply, and the apply itself (per transaction). */
  waiting: ReturnType<typeof summarize> | undefined;
  /** The part of `waiting` up to the batch's first bytes arriving (master, wire), and the rest (replica's loop). */
  toReceipt: ReturnType<typeof summarize> | undefined;
  receiptToApply: ReturnType<typeof summarize> | undefined;
  applying: ReturnType<typeof summarize> | undefined;
  windows: { fromS: number; toS: number; n: number; p50: number; p99: number; max: number }[];
  applyRate: number;
  /** From the end of the master's measured part until the replica had applied all of it (ms; 0 = already done). */
  drainMs: number;
  replicaCpuMicrosPerTx: number;
  masterCpuMicrosPerTx: number;
  /** CPU time per second of the run, in % of one core. */
  replicaCpuPercent: number;
  masterCpuPercent: number;
  replicaLoopDelay: { p99: number; max: number };
  consistent: boolean;
  streamErrors: number;
}

async function lagRun(label: string, synchronous: Synchronous, rate: number, seconds: number, warmupSeconds: number): Promise<LagResult> {
  const tmp = benchDir();
  let master: MasterProcess | undefined;
  let follower: Follower | undefined;
  try {
    master = await MasterProcess.start(path.join(tmp.dir, 'master.db'), synchronous);
    const clock = await master.clockOffset();
    // The master's transactions before the load are few; a quarter more for the rate's overshoot.
    follower = follow(master.url, path.join(tmp.dir, 'replica'), Math.ceil(rate * (seconds + warmupSeconds) * 1.25) + 1000);
    follower.replica.start();
    await follower.snapshotAt;
    const initial = await master.position();
    await waitFor(() => (follower!.replica.position?.txid ?? -1) >= initial.txid, 10_000, 'the replica to catch up before the load');

    const { measuring, done } = master.load(rate, seconds, warmupSeconds);
    const m = await measuring;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const delay = monitorEventLoopDelay({ resolution: 1 });
    delay.enable();
    const load = await done;
    const startTxid = Number(m.txid);
    await waitFor(() => (follower!.replica.durablePosition?.txid ?? -1) >= load.endTxid, 60_000, `the replica to apply up to txid ${load.endTxid}`);
    const cpu = process.cpuUsage(cpu0);
    const cpuWallMs = performance.now() - t0;
    delay.disable();
    const end = follower.replica.position!;

    // Transactions of the measured part: txids startTxid+1 .. endTxid.
    const t = follower.times;
    const lags: number[] = [];
    const durableLags: number[] = [];
    const waits: number[] = [];
    const toReceipt: number[] = [];
    const receiptToApply: number[] = [];
    const applies: number[] = [];
    const byWindow = new Map<number, number[]>();
    let batches = 0;
    let bytes = 0;
    let lastApply = 0;
    for (let txid = startTxid + 1; txid <= load.endTxid; txid++) {
      if (t.visible[txid] === 0) continue;
      // Our clock minus the master's, corrected by the measured offset between the two.
      const commit = t.commit[txid]! - clock.offsetMs;
      const lag = t.visible[txid]! - commit;
      lags.push(lag);
      if (t.durable[txid] !== 0) durableLags.push(t.durable[txid]! - commit);
      if (!Number.isNaN(t.started[txid])) {
        waits.push(t.started[txid]! - commit);
        if (!Number.isNaN(t.received[txid])) {
          toReceipt.push(t.received[txid]! - commit);
          receiptToApply.push(t.started[txid]! - t.received[txid]!);
        }
        applies.push(t.visible[txid]! - t.started[txid]!);
      }
      // The last few commits may carry a time a hair past the end: they count in the last window.
      const w = Math.min(Math.floor((t.commit[txid]! - load.startMs) / 10_000), Math.ceil(seconds / 10) - 1);
      let list = byWindow.get(w);
      if (!list) byWindow.set(w, (list = []));
      list.push(lag);
      batches += t.batchEnd[txid]!;
      bytes += t.batchBytes[txid]!;
      lastApply = Math.max(lastApply, t.visible[txid]!);
    }
    const windows = [...byWindow.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([w, xs]) => {
        const s = summarize(xs);
        return { fromS: w * 10, toS: Math.min((w + 1) * 10, seconds), n: s.n, p50: s.p50, p99: s.p99, max: s.max };
      });
    const lastApplyMasterClock = lastApply + clock.offsetMs;
    return {
      label,
      synchronous,
      targetRate: rate,
      load,
      clock,
      txs: lags.length,
      batches,
      recordBytesPerTx: bytes / Math.max(1, lags.length),
      lag: summarize(lags),
      durableLag: summarize(durableLags),
      waiting: waits.length === lags.length && waits.length > 0 ? summarize(waits) : undefined,
      toReceipt: toReceipt.length > 0 ? summarize(toReceipt) : undefined,
      receiptToApply: receiptToApply.length > 0 ? summarize(receiptToApply) : undefined,
      applying: applies.length === lags.length && applies.length > 0 ? summarize(applies) : undefined,
      windows,
      applyRate: (lags.length * 1000) / (lastApplyMasterClock - load.startMs),
      drainMs: Math.max(0, lastApplyMasterClock - load.endMs),
      replicaCpuMicrosPerTx: (cpu.user + cpu.system) / Math.max(1, lags.length),
      masterCpuMicrosPerTx: load.cpuMicrosPerWrite,
      replicaCpuPercent: (cpu.user + cpu.system) / 10 / cpuWallMs,
      masterCpuPercent: (load.cpuMicrosPerWrite * load.writes) / 10 / load.ms,
      replicaLoopDelay: { p99: delay.percentile(99) / 1e6, max: delay.max / 1e6 },
      consistent:
        end.txid === load.endTxid && end.checksum === load.endChecksum && lags.length === load.endTxid - startTxid && durableLags.length === lags.length,
      streamErrors: follower.streamErrors,
    };
  } finally {
    await follower?.stop();
    await master?.stop();
    tmp.remove();
  }
}

function printLag(title: string, results: LagResult[], withWindows: boolean): void {
  console.log(`\n${title}\n`);
  printTable(
    ['run', 'master sync', 'target/s', 'achieved/s', 'applied/s', 'txs', 'mean batch', 'visible p50 ms', 'p99 ms', 'max ms', 'durable p50 ms', 'p99 ms', 'max ms', 'drain ms', 'clock offset ms', 'ok'],
    results.map((r) => [
      r.label,
      r.synchronous,
      fmt(r.targetRate),
      fmt(r.load.achievedRate),
      fmt(r.applyRate),
      fmt(r.txs),
      fmt(r.txs / Math.max(1, r.batches), 2),
      fmt(r.lag.p50, 3),
      fmt(r.lag.p99, 3),
      fmt(r.lag.max, 2),
      fmt(r.durableLag.p50, 3),
      fmt(r.durableLag.p99, 3),
      fmt(r.durableLag.max, 2),
      fmt(r.drainMs, 1),
      `${fmt(r.clock.offsetMs, 3)} ±${fmt(r.clock.rttMs / 2, 3)}`,
      r.consistent && r.streamErrors === 0 ? 'yes' : `NO (errors ${r.streamErrors})`,
    ]),
  );
  console.log('\nCPU and event-loop stalls of each side during the run\n');
  printTable(
    ['run', 'master sync', 'stream bytes/tx', 'master CPU %', 'µs/tx', 'loop delay p99 ms', 'max ms', 'max write ms', 'replica CPU %', 'µs/tx', 'loop delay p99 ms', 'max ms'],
    results.map((r) => [
      r.label,
      r.synchronous,
      fmt(r.recordBytesPerTx),
      fmt(r.masterCpuPercent),
      fmt(r.masterCpuMicrosPerTx, 1),
      fmt(r.load.loopDelayP99Ms, 2),
      fmt(r.load.loopDelayMaxMs, 1),
      fmt(r.load.maxWriteMs, 1),
      fmt(r.replicaCpuPercent),
      fmt(r.replicaCpuMicrosPerTx, 1),
      fmt(r.replicaLoopDelay.p99, 2),
      fmt(r.replicaLoopDelay.max, 1),
    ]),
  );
  const split = results.filter((r) => r.waiting && r.applying);
  if (split.length > 0) {
    console.log('\nWhere the visible lag goes, per transaction: commit to the start of its batch\'s apply (capture, stream, replica event loop), then the apply (verify, write, commit)\n');
    printTable(
      ['run', 'master sync', 'waiting p50 ms', 'p99 ms', 'of it to receipt p50', 'p99', 'receipt to apply p50', 'p99', 'applying p50 ms', 'p99 ms', 'max ms'],
      split.map((r) => [
        r.label,
        r.synchronous,
        fmt(r.waiting!.p50, 3),
        fmt(r.waiting!.p99, 3),
        r.toReceipt ? fmt(r.toReceipt.p50, 3) : '–',
        r.toReceipt ? fmt(r.toReceipt.p99, 3) : '–',
        r.receiptToApply ? fmt(r.receiptToApply.p50, 3) : '–',
        r.receiptToApply ? fmt(r.receiptToApply.p99, 3) : '–',
        fmt(r.applying!.p50, 3),
        fmt(r.applying!.p99, 3),
        fmt(r.applying!.max, 2),
      ]),
    );
  }
  for (const r of results) {
    if (r.load.behind > r.load.writes / 1000) console.log(`!! ${r.label}: the master's loop ended ${r.load.behind} writes behind schedule (max write ${fmt(r.load.maxWriteMs, 1)} ms)`);
  }
  if (!withWindows) return;
  for (const r of results) {
    console.log(`\n${r.label}: lag per 10 s of the run (by master commit time)\n`);
    printTable(
      ['seconds', 'txs', 'p50 ms', 'p99 ms', 'max ms'],
      r.windows.map((w) => [`${w.fromS}–${w.toS}`, fmt(w.n), fmt(w.p50, 3), fmt(w.p99, 2), fmt(w.max, 1)]),
    );
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Snapshot bootstrap

interface SnapshotResult {
  blobMiB: number;
  fileBytes: number;
  buildSeconds: number;
  masterStartSeconds: number;
  downloadSeconds: number | undefined;
  totalSeconds: number;
  masterCpuSeconds: number | undefined;
  replicaCpuSeconds: number;
  identical: boolean;
}

const BLOB_BYTES = 64 * 1024;
const BLOBS_PER_TX = 256; // 16 MiB per transaction

/** Builds a database of `mib` MiB of 64 KiB random blobs (plus NebulaGC's schema) at `dbPath`. */
function buildBigDatabase(dbPath: string, mib: number): void {
  const opened = openStore({ dbPath, synchronous: 'NORMAL', secret: TEST_SECRET });
  try {
    const { writer } = opened.store;
    writer.write('bench.setup', (db) => db.exec('CREATE TABLE bench_blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)'));
    const insert = writer.db.prepare('INSERT INTO bench_blobs (data) VALUES (?)');
    let left = Math.ceil((mib * 1024 * 1024) / BLOB_BYTES);
    while (left > 0) {
      const n = Math.min(left, BLOBS_PER_TX);
      const random = randomBytes(n * BLOB_BYTES);
      writer.write('bench.blobs', () => {
        for (let i = 0; i < n; i++) insert.run(random.subarray(i * BLOB_BYTES, (i + 1) * BLOB_BYTES));
      });
      left -= n;
    }
    writer.db.pragma('wal_checkpoint(TRUNCATE)');
  } finally {
    opened.close();
  }
}

async function snapshotBootstrap(): Promise<SnapshotResult> {
  const mib = envNumber('BENCH_SNAPSHOT_MB', 256);
  const tmp = benchDir();
  let master: MasterProcess | undefined;
  let follower: Follower | undefined;
  try {
    const dbPath = path.join(tmp.dir, 'master.db');
    let t = performance.now();
    buildBigDatabase(dbPath, mib);
    const buildSeconds = (performance.now() - t) / 1000;
    console.log(`  built a ${fmt(statSync(dbPath).size / 1048576)} MiB database in ${fmt(buildSeconds, 1)} s`);
    t = performance.now();
    // The master hashes every page at start (its position's checksum): allow for a big file.
    master = await MasterProcess.start(dbPath, 'FULL', 300_000);
    const masterStartSeconds = (performance.now() - t) / 1000;
    const fileBytes = statSync(dbPath).size;
    const masterPos = await master.position();

    const cpuMaster0 = cpuTime(master.pid);
    const cpu0 = process.cpuUsage();
    t = performance.now();
    follower = follow(master.url, path.join(tmp.dir, 'replica'));
    follower.replica.start();
    const installedAt = await follower.snapshotAt;
    const totalSeconds = (installedAt - (performance.timeOrigin + t)) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const cpuMaster1 = cpuTime(master.pid);
    const verified = follower.logLines.find((o) => o.msg === 'snapshot downloaded and verified');
    const pos = follower.replica.position;
    return {
      blobMiB: mib,
      fileBytes,
      buildSeconds,
      masterStartSeconds,
      downloadSeconds: typeof verified?.ms === 'number' ? verified.ms / 1000 : undefined,
      totalSeconds,
      masterCpuSeconds: cpuMaster0 !== undefined && cpuMaster1 !== undefined ? (cpuMaster1 - cpuMaster0) / 1e6 : undefined,
      replicaCpuSeconds: (cpu.user + cpu.system) / 1e6,
      identical: pos !== undefined && pos.txid === masterPos.txid && pos.checksum === masterPos.checksum,
    };
  } finally {
    await follower?.stop();
    await master?.stop();
    tmp.remove();
  }
}

function printSnapshot(r: SnapshotResult): void {
  const mb = r.fileBytes / 1e6;
  console.log(`\nSnapshot bootstrap: ${fmt(r.fileBytes / 1048576)} MiB database (${fmt(r.blobMiB)} MiB of 64 KiB random blobs)\n`);
  printTable(
    ['step', 'seconds', 'MB/s', 'MiB/s'],
    [
      ['download + verify + fsync (replica log)', r.downloadSeconds === undefined ? '–' : fmt(r.downloadSeconds, 2), r.downloadSeconds ? fmt(mb / r.downloadSeconds) : '–', r.downloadSeconds ? fmt(r.fileBytes / 1048576 / r.downloadSeconds) : '–'],
      ['start() to installed copy (onApplied txCount 0)', fmt(r.totalSeconds, 2), fmt(mb / r.totalSeconds), fmt(r.fileBytes / 1048576 / r.totalSeconds)],
    ],
  );
  console.log(
    `CPU: master ${r.masterCpuSeconds === undefined ? '–' : fmt(r.masterCpuSeconds, 2)} s, replica ${fmt(r.replicaCpuSeconds, 2)} s. ` +
      `Build ${fmt(r.buildSeconds, 1)} s; master start (hashes every page) ${fmt(r.masterStartSeconds, 1)} s. ` +
      `Copy at the master's position and checksum: ${r.identical ? 'yes' : 'NO'}`,
  );
}

// ---------------------------------------------------------------------------------------------

export async function runReplicationBench(): Promise<boolean> {
  const parts = new Set(envList('BENCH_REPLICATION', 'capture,lag,keepup,snapshot'));
  const restoreSignals = exitOnSignals();
  let ok = true;
  try {
    console.log('\nReplication benchmarks');
    if (parts.has('capture')) printCapture(await captureOverhead());
    if (parts.has('lag')) {
      const seconds = envNumber('BENCH_LAG_SECONDS', 15);
      const results: LagResult[] = [];
      for (const sync of syncList('BENCH_LAG_SYNC', 'FULL,NORMAL')) {
        results.push(await lagRun(`1,000/s, ${seconds} s`, sync, 1000, seconds, 2));
      }
      printLag(
        'Lag at 1,000 writes/s: master commit to readers of the replica seeing it (visible), and to its pages and position being on disk (durable: what the replica acknowledges)',
        results,
        false,
      );
      console.log('Goal: p50 < 0.5 ms, p99 < 2 ms.');
      ok &&= results.every((r) => r.consistent && r.streamErrors === 0);
    }
    if (parts.has('keepup')) {
      const seconds = envNumber('BENCH_KEEPUP_SECONDS', 15);
      const rate = envNumber('BENCH_KEEPUP_RATE', 10_000);
      const r = await lagRun(`${fmt(rate)}/s, ${seconds} s`, 'NORMAL', rate, seconds, 2);
      printLag(`Keeping up: the master writes ${fmt(rate)} tx/s at synchronous=NORMAL`, [r], true);
      console.log('Goal: p99 < 20 ms, not growing over the run.');
      ok &&= r.consistent && r.streamErrors === 0;
    }
    if (parts.has('snapshot')) {
      const r = await snapshotBootstrap();
      printSnapshot(r);
      ok &&= r.identical;
    }
  } finally {
    restoreSignals();
  }
  return ok;
}

if (isEntryPoint(import.meta.url) && !(await runReplicationBench())) process.exitCode = 1;

