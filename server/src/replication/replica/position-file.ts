import { closeSync, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { PacedSync } from '../paced-sync.js';
import type { Position } from '../wire/record.js';

const SLOT_BYTES = 512;
/**
 * How often the file is fdatasynced (on the thread pool) while written. A power loss can leave
 * it this far behind the copy: at 10,000 tx/s about 10,000 records to replay, well inside the
 * applier's MAX_RECOVERY_RECORDS.
 */
const SYNC_EVERY_MS = 1000;

/**
 * The replica's position: two fixed slots written in turn, each with a sequence number and a
 * crc, so a torn write leaves the other slot (one position older) intact.
 *
 * A slot is written only after its batch is on disk (the WAL fdatasync of Applier.makeDurable),
 * so every slot that reaches the disk names a position the file has already passed. That is what
 * lets the slot write skip its own fsync: after a power loss the slot may be older than the
 * file, and the applier, which recomputes the file's checksum at start, replays from it until
 * the checksums agree (page images are idempotent). One fsync per batch instead of two is
 * about 0.15 ms less lag on this disk (docs/BENCHMARKS.md, Replication lag). A paced background fdatasync
 * bounds how far back a power loss can leave it.
 */
export class PositionFile {
  private readonly fd: number;
  private seq = 0;
  private readonly pacing = new PacedSync(SYNC_EVERY_MS, Number.POSITIVE_INFINITY);
  private closed = false;

  constructor(readonly file: string) {
    closeSync(openSync(file, 'a+'));
    this.fd = openSync(file, 'r+');
    // Continue the sequence already on disk, so the next write is the newest slot.
    this.read();
  }

  read(): Position | undefined {
    let best: { seq: number; pos: Position } | undefined;
    for (let slot = 0; slot < 2; slot++) {
      const buf = Buffer.alloc(SLOT_BYTES);
      const n = readSync(this.fd, buf, 0, SLOT_BYTES, slot * SLOT_BYTES);
      if (n < 8) continue;
      const len = buf.readUInt32BE(0);
      if (len === 0 || len > SLOT_BYTES - 8) continue;
      const json = buf.subarray(4, 4 + len);
      if (crc32(json) !== buf.readUInt32BE(4 + len)) continue;
      try {
        const v = JSON.parse(json.toString('utf8')) as { seq: number } & Position;
        if (!best || v.seq > best.seq) best = { seq: v.seq, pos: { epoch: v.epoch, txid: v.txid, checksum: v.checksum } };
      } catch {
        continue;
      }
    }
    if (best) this.seq = best.seq;
    return best?.pos;
  }

  /** Writes the next slot, without waiting for the disk. */
  write(pos: Position): void {
    this.seq++;
    const json = Buffer.from(JSON.stringify({ seq: this.seq, ...pos }), 'utf8');
    const buf = Buffer.alloc(SLOT_BYTES);
    buf.writeUInt32BE(json.length, 0);
    json.copy(buf, 4);
    buf.writeUInt32BE(crc32(json), 4 + json.length);
    writeSync(this.fd, buf, 0, SLOT_BYTES, (this.seq % 2) * SLOT_BYTES);
    this.pacing.maybe(this.fd, SLOT_BYTES);
  }

  /** Syncs the newest slot (once both slots exist the size never changes: fdatasync skips the inode), then closes. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    fdatasyncSync(this.fd);
    this.pacing.close(this.fd);
  }
}
