import type { ReplicaView, ReplicationMaster, Snapshot } from './master.js';
import { encodeSnapshotHeader } from '../wire/record.js';

/** Bytes queued for one replica before the master stops pulling from the log for it. */
const HIGH_WATER_BYTES = 8 * 1024 * 1024;
const HEARTBEAT_MS = 500;

/**
 * The body of a replica's stream: every record after `from`, read from the log as the replica
 * takes them (a slow replica costs queue space, never memory without bound), then live records
 * as commits wake it, and a heartbeat record whenever nothing else was sent for 500 ms.
 */
export function replicationStream(
  master: ReplicationMaster,
  view: ReplicaView,
  from: number,
  onBytes: (n: number) => void,
): ReadableStream<Uint8Array> {
  let next = from + 1;
  let lastSentAt = 0;
  let unsubscribe: (() => void) | undefined;
  let closed = false;
  let controller!: ReadableStreamDefaultController<Uint8Array>;

  const stop = (): void => {
    closed = true;
    unsubscribe?.();
    view.connected = false;
  };
  const send = (buf: Buffer): void => {
    controller.enqueue(buf);
    onBytes(buf.length);
    lastSentAt = Date.now();
  };
  let pumping = false;
  let again = false;
  // enqueue() may call pull() synchronously, which pumps again: run one pump at a time.
  const pump = (): void => {
    if (pumping) {
      again = true;
      return;
    }
    pumping = true;
    try {
      do {
        again = false;
        pumpOnce();
      } while (again && !closed);
    } finally {
      pumping = false;
    }
  };
  const end = (): void => {
    if (closed) return;
    stop();
    controller.close();
  };
  const pumpOnce = (): void => {
    if (closed) return;
    // Forgotten by an operator (DELETE /cluster/peers/{id}): the replica may connect again.
    if (master.replicas.get(view.id) !== view) return end();
    try {
      // Only records already written to the log's file: a replica must never hold a
      // transaction the master could lose in a crash.
      const last = master.log.durableTxid ?? 0;
      if (next <= last) {
        if (!master.log.covers(next - 1)) {
          // Retention overtook this replica: end the stream; on reconnecting it is told to
          // take a snapshot.
          stop();
          controller.close();
          return;
        }
        for (const buf of master.log.recordsAfter(next - 1)) {
          next++;
          send(buf);
          if ((controller.desiredSize ?? 0) <= 0) break;
        }
        view.sentTxid = next - 1;
      } else if (Date.now() - lastSentAt >= HEARTBEAT_MS - 50) {
        send(master.heartbeat());
      }
    } catch (err) {
      stop();
      controller.error(err);
    }
  };

  return new ReadableStream<Uint8Array>(
    {
      start(c) {
        controller = c;
        unsubscribe = master.subscribe({ wake: pump, end });
        pump();
      },
      // The replica drained its queue: carry on with a backlog that stopped at the high-water mark.
      pull: pump,
      cancel: stop,
    },
    new ByteLengthQueuingStrategy({ highWaterMark: HIGH_WATER_BYTES }),
  );
}

/** Reads pages this many at a time, yielding to the event loop in between. */
const SNAPSHOT_BATCH_PAGES = 256;

/**
 * The body of a snapshot: a sealed header (position, page size, page count), then pages
 * 1..pageCount in order. Closes the snapshot's read transaction when done or abandoned.
 */
export function snapshotStream(snap: Snapshot, onBytes: (n: number) => void): { body: ReadableStream<Uint8Array>; length: number } {
  const header = encodeSnapshotHeader({ ...snap.position, pageSize: snap.pageSize, pageCount: snap.pageCount });
  const rows = snap.db.prepare('SELECT pgno, data FROM sqlite_dbpage').iterate() as IterableIterator<{ pgno: number; data: Buffer }>;
  let expected = 1;
  let done = false;
  const finish = (): void => {
    if (done) return;
    done = true;
    rows.return?.();
    if (snap.db.inTransaction) snap.db.exec('ROLLBACK');
    snap.db.close();
  };
  const body = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        controller.enqueue(header);
        onBytes(header.length);
      },
      pull(controller) {
        try {
          const chunk: Buffer[] = [];
          while (chunk.length < SNAPSHOT_BATCH_PAGES && expected <= snap.pageCount) {
            const r = rows.next();
            if (r.done) throw new Error(`snapshot ended at page ${expected - 1} of ${snap.pageCount}`);
            if (r.value.pgno !== expected) throw new Error(`snapshot expected page ${expected}, read ${r.value.pgno}`);
            chunk.push(r.value.data);
            expected++;
          }
          if (chunk.length > 0) {
            const buf = Buffer.concat(chunk);
            controller.enqueue(buf);
            onBytes(buf.length);
          }
          if (expected > snap.pageCount) {
            finish();
            controller.close();
          }
        } catch (err) {
          finish();
          controller.error(err);
        }
      },
      cancel: finish,
    },
    new ByteLengthQueuingStrategy({ highWaterMark: 4 * 1024 * 1024 }),
  );
  return { body, length: header.length + snap.pageCount * snap.pageSize };
}
