import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../log.js';
import { DbChecksum } from '../wire/checksum.js';
import type { OpenedSnapshot } from '../wire/protocol.js';
import { decodeRecord, RECORD_SNAPSHOT, type Position } from '../wire/record.js';

export interface DownloadedSnapshot {
  file: string;
  position: Position;
  checksum: DbChecksum;
  bytes: number;
}

const PROGRESS_EVERY_BYTES = 64 * 1024 * 1024;

/**
 * Downloads the master's snapshot into `<db>.snapshot-tmp`, checking every page into a
 * checksum as it arrives; then fsyncs it. The live copy is not touched: an interrupted or
 * corrupt download leaves it serving, and only a verified file is returned.
 */
export async function downloadSnapshot(snapshot: OpenedSnapshot, dbPath: string, log: Logger): Promise<DownloadedSnapshot> {
  const tmp = `${dbPath}.snapshot-tmp`;
  rmSync(tmp, { force: true });
  const res = snapshot.body;
  const total = snapshot.contentLength;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    let head = Buffer.alloc(0);
    let header: (Position & { pageSize: number; pageCount: number }) | undefined;
    let checksum: DbChecksum | undefined;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let pgno = 0;
    let received = 0;
    let nextProgress = PROGRESS_EVERY_BYTES;
    const started = Date.now();
    for await (const chunk of res as AsyncIterable<Buffer>) {
      received += chunk.length;
      let data = chunk;
      if (!header) {
        // The sealed header record comes first; raw pages follow it directly.
        head = Buffer.concat([head, chunk]);
        if (head.length < 4) continue;
        const headerBytes = head.readUInt32BE(0) + 8;
        if (headerBytes > 1024) throw new Error('snapshot header is malformed');
        if (head.length < headerBytes) continue;
        const r = decodeRecord(head.subarray(0, headerBytes));
        if (r.type !== RECORD_SNAPSHOT) throw new Error('snapshot does not start with its header');
        header = r;
        checksum = new DbChecksum(r.pageSize);
        log.info({ txid: r.txid, pages: r.pageCount, bytes: total }, 'snapshot download started');
        data = head.subarray(headerBytes);
        if (data.length === 0) continue;
      }
      pending.push(data);
      pendingBytes += data.length;
      if (pendingBytes < header.pageSize) continue;
      const all = Buffer.concat(pending, pendingBytes);
      const whole = all.length - (all.length % header.pageSize);
      for (let at = 0; at < whole; at += header.pageSize) checksum!.setPage(++pgno, all.subarray(at, at + header.pageSize));
      let off = 0;
      while (off < whole) off += writeSync(fd, all, off, whole - off);
      pending = whole < all.length ? [all.subarray(whole)] : [];
      pendingBytes = all.length - whole;
      if (received >= nextProgress) {
        nextProgress += PROGRESS_EVERY_BYTES;
        const mb = received / 1048576;
        log.info({ received_mb: Math.round(mb), total_mb: Math.round(total / 1048576), mb_per_s: Math.round(mb / ((Date.now() - started) / 1000)) }, 'snapshot download progress');
      }
    }
    if (!header || !checksum) throw new Error('snapshot ended before its header');
    if (pendingBytes !== 0 || pgno !== header.pageCount) throw new Error(`snapshot ended after ${pgno} of ${header.pageCount} pages`);
    checksum.resize(pgno);
    if (checksum.value !== header.checksum) throw new Error(`snapshot checksum ${checksum.value} does not match the master's ${header.checksum}`);
    fsyncSync(fd);
    closeSync(fd);
    const position = { epoch: header.epoch, txid: header.txid, checksum: header.checksum };
    log.info({ ...position, bytes: received, ms: Date.now() - started }, 'snapshot downloaded and verified');
    return { file: tmp, position, checksum, bytes: received };
  } catch (err) {
    try {
      closeSync(fd);
    } catch {
      // Already closed after the fsync.
    }
    rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * Puts a verified snapshot in place of the database. Every connection to the old copy must be
 * closed first: its -wal and -shm belong to the old file and are removed before the rename.
 */
export function installSnapshot(snapshot: DownloadedSnapshot, dbPath: string): void {
  rmSync(`${dbPath}-wal`, { force: true });
  rmSync(`${dbPath}-shm`, { force: true });
  renameSync(snapshot.file, dbPath);
  const dirFd = openSync(path.dirname(path.resolve(dbPath)), 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

