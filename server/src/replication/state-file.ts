import { closeSync, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import type { Position } from './record.js';

const SLOT_BYTES = 512;

/**
 * The replica's durable position: two fixed slots written in turn, each with a sequence number
 * and a crc, so a write torn by power loss leaves the other slot (one position older) intact.
 * One small pwrite and one fdatasync per batch.
 */
export class PositionFile {
  private readonly fd: number;
  private seq = 0;

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

  write(pos: Position): void {
    this.seq++;
    const json = Buffer.from(JSON.stringify({ seq: this.seq, ...pos }), 'utf8');
    const buf = Buffer.alloc(SLOT_BYTES);
    buf.writeUInt32BE(json.length, 0);
    json.copy(buf, 4);
    buf.writeUInt32BE(crc32(json), 4 + json.length);
    writeSync(this.fd, buf, 0, SLOT_BYTES, (this.seq % 2) * SLOT_BYTES);
    // Once both slots exist the size never changes, so only the data needs to reach the disk:
    // no inode timestamp update to commit to the filesystem journal as well.
    fdatasyncSync(this.fd);
  }

  close(): void {
    closeSync(this.fd);
  }
}
