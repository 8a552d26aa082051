import { randomBytes } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Statement } from 'better-sqlite3';
import { loadConfig } from '../../server/src/config.js';
import type { Writer } from '../../server/src/db/writer.js';
import { createLogger } from '../../server/src/log.js';
import { startServer, type RunningServer } from '../../server/src/server.js';
import { isEntryPoint } from './entry.js';

/**
 * A replication master under a steady write load, for test/bench/replication.ts: the real
 * server (startServer, configured from NEBULAGC_* like `serve`, so NEBULAGC_HA_MODE=master and
 * NEBULAGC_DB_SYNCHRONOUS apply), plus a loop that writes single-row transactions through
 * `store.writer` at a target rate (one write per turn of the event loop, paced by a 1 ms timer).
 *
 * Run by replication.ts with an IPC channel, it waits for messages:
 *   {type:'clock', id}                            -> {type:'clock', id, t}   (its clock, for the offset check)
 *   {type:'load', id, rate, seconds, warmupSeconds} -> {type:'measuring', id, t, txid}, then {type:'done', id, ...LoadResult}
 *   {type:'position', id}                         -> {type:'position', id, txid, checksum}
 *   {type:'stop'}                                 -> closes the server and exits
 * It announces {type:'ready', url, txid} once listening.
 *
 * Run by hand (no IPC), it writes at BENCH_RATE (default 1000) writes/s for BENCH_SECONDS
 * (default 10), prints the result as JSON and keeps serving until SIGINT/SIGTERM:
 *   NEBULAGC_HA_MODE=master NEBULAGC_REPLICATION_SECRET=... NEBULAGC_DB_PATH=/tmp/x.db \
 *   NEBULAGC_HMAC_SECRET=... BENCH_RATE=10000 node dist/test/bench/master-load.js
 */

/** The bench table: created through the writer, one row per write transaction. */
export const BENCH_TABLE_SQL = 'CREATE TABLE IF NOT EXISTS bench_rows (id INTEGER PRIMARY KEY, at REAL NOT NULL, payload BLOB NOT NULL)';
export const BENCH_INSERT_SQL = 'INSERT INTO bench_rows (at, payload) VALUES (?, ?)';
/** Bytes of random payload per row: a small row, as a heartbeat or a node update is. */
export const PAYLOAD_BYTES = 100;

/** Creates the bench table and returns a function doing one single-row write transaction. */
export function benchWriter(writer: Writer): () => void {
  writer.write('bench.setup', (db) => db.exec(BENCH_TABLE_SQL));
  const insert: Statement = writer.db.prepare(BENCH_INSERT_SQL);
  // Random payloads prepared up front, so the loop measures SQLite and replication, not the RNG.
  const payloads = Array.from({ length: 1024 }, () => randomBytes(PAYLOAD_BYTES));
  let n = 0;
  const fn = (): void => {
    insert.run(Date.now(), payloads[n++ & 1023]!);
  };
  return () => writer.write('bench.insert', fn);
}

export interface LoadResult {
  writes: number;
  /** Wall time of the measured part, ms. */
  ms: number;
  achievedRate: number;
  /** CPU (user + system) this process spent per write during the measured part, µs. */
  cpuMicrosPerWrite: number;
  /** Master clock (timeOrigin + now, ms) at the start and end of the measured part. */
  startMs: number;
  endMs: number;
  /** The master's replication position before the first and after the last measured write. */
  startTxid: number;
  endTxid: number;
  endChecksum: string;
  /** Longest single write (commit + capture hook), ms. */
  maxWriteMs: number;
  /** Writes behind schedule at the end (the loop could not keep the rate). */
  behind: number;
  /** Event-loop delay of this process during the measured part (ms): its stalls delay the stream too. */
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
}

const wallNow = (): number => performance.timeOrigin + performance.now();

/**
 * Writes at `rate` per second for `seconds`: at most one millisecond's quota (rate / 1000, at
 * least 1) per turn of the event loop, so that between turns the stream sends what was captured,
 * as it would between a server's requests. On schedule it sleeps on a 1 ms timer; behind
 * schedule it goes on with setImmediate.
 */
function paced(write: () => void, rate: number, seconds: number): Promise<{ writes: number; ms: number; maxWriteMs: number; behind: number }> {
  return new Promise((resolve) => {
    const start = performance.now();
    const end = start + seconds * 1000;
    const total = Math.round(rate * seconds);
    let done = 0;
    let maxWriteMs = 0;
    const perTurn = Math.max(1, Math.ceil(rate / 1000));
    const tick = (): void => {
      const now = performance.now();
      if (now >= end || done >= total) {
        resolve({ writes: done, ms: now - start, maxWriteMs, behind: total - done });
        return;
      }
      const due = Math.min(total, Math.floor((rate * (now - start)) / 1000) + 1);
      for (let i = 0; i < perTurn && done < due; i++) {
        const t0 = performance.now();
        write();
        done++;
        const took = performance.now() - t0;
        if (took > maxWriteMs) maxWriteMs = took;
      }
      if (done < due) setImmediate(tick);
      else setTimeout(tick, 1);
    };
    tick();
  });
}

export async function runLoad(server: RunningServer, write: () => void, rate: number, seconds: number, warmupSeconds: number, onMeasuring?: (t: number, txid: number) => void): Promise<LoadResult> {
  const master = server.role.master;
  if (!master) throw new Error('master-load needs NEBULAGC_HA_MODE=master');
  if (warmupSeconds > 0) await paced(write, rate, warmupSeconds);
  const startTxid = master.position.txid;
  const startMs = wallNow();
  onMeasuring?.(startMs, startTxid);
  const cpu0 = process.cpuUsage();
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  const r = await paced(write, rate, seconds);
  delay.disable();
  const cpu = process.cpuUsage(cpu0);
  const endMs = wallNow();
  // Commits are captured in the writer's hook, so the position is already final here.
  const end = master.position;
  return {
    writes: r.writes,
    ms: r.ms,
    achievedRate: (r.writes * 1000) / r.ms,
    cpuMicrosPerWrite: (cpu.user + cpu.system) / Math.max(1, r.writes),
    startMs,
    endMs,
    startTxid,
    endTxid: end.txid,
    endChecksum: end.checksum,
    maxWriteMs: r.maxWriteMs,
    behind: r.behind,
    loopDelayP99Ms: delay.percentile(99) / 1e6,
    loopDelayMaxMs: delay.max / 1e6,
  };
}

type Message =
  | { type: 'clock'; id: number }
  | { type: 'load'; id: number; rate: number; seconds: number; warmupSeconds: number }
  | { type: 'position'; id: number }
  | { type: 'stop' };

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const log = createLogger(config.logLevel);
  const server = await startServer(config, log);
  const write = benchWriter(server.store.writer);
  const master = server.role.master;
  if (!master) throw new Error('master-load needs NEBULAGC_HA_MODE=master');

  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);

  const send = process.send?.bind(process);
  if (!send) {
    const rate = Number(process.env.BENCH_RATE ?? 1000);
    const seconds = Number(process.env.BENCH_SECONDS ?? 10);
    console.error(`master listening on ${server.url}; writing ${rate}/s for ${seconds} s`);
    const r = await runLoad(server, write, rate, seconds, 0);
    console.log(JSON.stringify(r));
    return;
  }
  // Parent gone (crashed or killed): do not linger with the database open.
  process.on('disconnect', stop);
  process.on('message', (m: Message) => {
    if (m.type === 'clock') send({ type: 'clock', id: m.id, t: wallNow() });
    else if (m.type === 'position') send({ type: 'position', id: m.id, ...master.position });
    else if (m.type === 'stop') stop();
    else if (m.type === 'load') {
      runLoad(server, write, m.rate, m.seconds, m.warmupSeconds, (t, txid) => send({ type: 'measuring', id: m.id, t, txid })).then(
        (r) => send({ type: 'done', id: m.id, ...r }),
        (err: unknown) => send({ type: 'error', id: m.id, message: (err as Error).stack ?? String(err) }),
      );
    }
  });
  send({ type: 'ready', url: server.url, txid: master.position.txid });
}

if (isEntryPoint(import.meta.url)) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
