import { parentPort, workerData } from 'node:worker_threads';
import { openDatabase, type Synchronous } from '../db/connection.js';

/**
 * The thread behind BackgroundCheckpointer: one connection that only runs PASSIVE checkpoints.
 * PASSIVE never takes the write lock and never goes past a reader's snapshot, so the main
 * thread's pins still decide how far it may copy.
 */
const { dbPath, synchronous } = workerData as { dbPath: string; synchronous: Synchronous };
const db = openDatabase(dbPath, { synchronous });
// Never wait: a checkpointer already running (our RESTART, litestream) makes this one a no-op.
db.pragma('busy_timeout = 0');

parentPort!.on('message', (m: { type: 'checkpoint' } | { type: 'close' }) => {
  if (m.type === 'close') {
    db.close();
    parentPort!.close();
    return;
  }
  try {
    const r = (db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[])[0]!;
    parentPort!.postMessage({ ok: true, ...r });
  } catch (err) {
    parentPort!.postMessage({ ok: false, error: (err as Error).message });
  }
});
