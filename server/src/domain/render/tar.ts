import { gunzipSync, gzipSync } from 'node:zlib';

const BLOCK = 512;

/**
 * The few tar operations rendering needs, synchronous so they can run inside a write
 * transaction: pulling one file out of an uploaded bundle (already validated on upload by
 * bundle-archive.ts) and writing a small archive byte-for-byte reproducibly.
 */

/** One regular file of a gzip'd tar, or undefined. Understands pax and GNU long names. */
export function readTarGzFile(gz: Buffer, wanted: string, maxUnpackedBytes: number): Buffer | undefined {
  const data = gunzipSync(gz, { maxOutputLength: maxUnpackedBytes });
  let offset = 0;
  let longName: string | undefined;
  while (offset + BLOCK <= data.length) {
    const header = data.subarray(offset, offset + BLOCK);
    if (header.every((b) => b === 0)) return undefined;
    const size = parseOctal(header.subarray(124, 136));
    const type = String.fromCharCode(header[156]!);
    const body = data.subarray(offset + BLOCK, offset + BLOCK + size);
    offset += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
    if (type === 'x') {
      longName = paxPath(body) ?? longName;
      continue;
    }
    if (type === 'L') {
      longName = cString(body);
      continue;
    }
    if (type === 'g') continue;
    const prefix = cString(header.subarray(345, 500));
    const name = longName ?? (prefix ? `${prefix}/${cString(header.subarray(0, 100))}` : cString(header.subarray(0, 100)));
    longName = undefined;
    if ((type === '0' || type === '\0') && name.replace(/^\.\//, '') === wanted) return Buffer.from(body);
  }
  return undefined;
}

const cString = (b: Buffer): string => {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? b.length : end).toString('utf8');
};

function parseOctal(b: Buffer): number {
  const s = cString(b).trim();
  return s === '' ? 0 : parseInt(s, 8);
}

/** pax records are "<len> key=value\n". */
function paxPath(body: Buffer): string | undefined {
  let path: string | undefined;
  let i = 0;
  while (i < body.length) {
    const space = body.indexOf(0x20, i);
    if (space < 0) break;
    const len = parseInt(body.subarray(i, space).toString('ascii'), 10);
    if (!(len > 0)) break;
    const record = body.subarray(space + 1, i + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (record.slice(0, eq) === 'path') path = record.slice(eq + 1);
    i += len;
  }
  return path;
}

export interface TarFile {
  name: string;
  content: Buffer;
}

/**
 * A ustar archive, gzip'd at a fixed level, with every varying header field pinned (mtime 0,
 * mode 0644, uid/gid 0, no owner names), so equal inputs give equal bytes and equal ETags.
 */
export function packTarGz(files: readonly TarFile[]): Buffer {
  const parts: Buffer[] = [];
  for (const f of files) {
    parts.push(ustarHeader(f.name, f.content.length), f.content);
    const pad = (BLOCK - (f.content.length % BLOCK)) % BLOCK;
    if (pad > 0) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(2 * BLOCK));
  // Level 1: these archives are a few KiB, and it costs half of level 9 for ~10% more bytes.
  return gzipSync(Buffer.concat(parts), { level: 1 });
}

function ustarHeader(name: string, size: number): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar entry name too long: ${name}`);
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  h.write('0000644\0', 100, 'ascii');
  h.write('0000000\0', 108, 'ascii');
  h.write('0000000\0', 116, 'ascii');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'ascii');
  h.write('00000000000\0', 136, 'ascii');
  h.write('0', 156, 'ascii');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
  return h;
}
