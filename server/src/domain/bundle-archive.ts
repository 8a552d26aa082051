import { createHash } from 'node:crypto';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import YAML from 'yaml';
import { DomainError } from './errors.js';

export interface BundleLimits {
  /** Compressed size, as stored and served. */
  maxBytes: number;
  /** Total size once gunzipped: guards against decompression bombs. */
  maxUnpackedBytes: number;
  maxEntries: number;
}

export const defaultBundleLimits = (maxBytes: number): BundleLimits => ({
  maxBytes,
  maxUnpackedBytes: Math.max(8 * maxBytes, 64 * 1024 * 1024),
  maxEntries: 256,
});

export interface InspectedBundle {
  data: Buffer;
  sha256: string;
  files: string[];
  /** The text of config.yml: what per-node configs are rendered from. */
  configYml: string;
}

export const REQUIRED_FILES = ['config.yml', 'ca.crt'] as const;

const bad = (message: string): DomainError => new DomainError('INVALID_BUNDLE', message);

/**
 * Reads a byte stream into memory, giving up as soon as it passes `maxBytes`; an oversize
 * upload is never buffered whole.
 */
export async function readLimited(source: AsyncIterable<Uint8Array>, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of source) {
    total += chunk.byteLength;
    if (total > maxBytes) throw new DomainError('PAYLOAD_TOO_LARGE', `bundle exceeds ${maxBytes} bytes`);
    chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  }
  return Buffer.concat(chunks, total);
}

/** A safe entry name is relative, has no `..`, and stays inside the bundle once normalised. */
export function normaliseEntryName(name: string): string {
  if (name.length === 0 || name.includes('\0') || name.includes('\\')) throw bad(`entry name "${name}" is not allowed`);
  if (name.startsWith('/')) throw bad(`entry "${name}" has an absolute path`);
  if (name.split('/').includes('..')) throw bad(`entry "${name}" escapes the bundle with ..`);
  const normal = path.posix.normalize(name).replace(/\/$/, '');
  if (normal.startsWith('../')) throw bad(`entry name "${name}" is not allowed`);
  return normal;
}

/**
 * Walks a gzip'd tar while it streams, enforcing the rules every consumer shares: only plain
 * files and directories with safe names, no duplicates, and the size and entry limits. Returns
 * each file's name with its content when `keep` asks for it, else null.
 */
export async function readBundleEntries(
  data: Buffer,
  limits: BundleLimits,
  keep: (name: string) => boolean,
): Promise<Map<string, Buffer | null>> {
  if (data.length > limits.maxBytes) throw new DomainError('PAYLOAD_TOO_LARGE', `bundle exceeds ${limits.maxBytes} bytes`);
  if (data.length < 2 || data[0] !== 0x1f || data[1] !== 0x8b) throw bad('bundle is not gzip-compressed');

  const files = new Map<string, Buffer | null>();
  let entries = 0;
  let unpacked = 0;
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    // tar-stream destroys an entry's stream with the error when the archive breaks (a bad
    // entry, a truncated gzip); without a listener that is an uncaught exception. The pipeline
    // reports the error through `extract`.
    stream.on('error', () => undefined);
    const fail = (err: DomainError): void => {
      stream.resume();
      extract.destroy(err);
    };
    if (++entries > limits.maxEntries) return fail(bad(`bundle has more than ${limits.maxEntries} entries`));
    let name: string;
    try {
      name = normaliseEntryName(header.name);
    } catch (err) {
      return fail(err as DomainError);
    }
    if (header.type === 'directory' || name === '.') {
      if (header.type !== 'directory') return fail(bad(`entry "${header.name}" is not allowed`));
      stream.resume();
      stream.on('end', next);
      return;
    }
    if (header.type !== 'file') return fail(bad(`entry "${header.name}" is a ${header.type}; only files and directories are allowed`));
    if (files.has(name)) return fail(bad(`entry "${name}" appears twice`));
    const kept = keep(name);
    const parts: Buffer[] = [];
    stream.on('data', (chunk: unknown) => {
      if (!Buffer.isBuffer(chunk)) return;
      unpacked += chunk.length;
      if (unpacked > limits.maxUnpackedBytes) {
        fail(new DomainError('PAYLOAD_TOO_LARGE', `bundle unpacks to more than ${limits.maxUnpackedBytes} bytes`));
        return;
      }
      if (kept) parts.push(chunk);
    });
    stream.on('end', () => {
      files.set(name, kept ? Buffer.concat(parts) : null);
      next();
    });
  });

  try {
    await pipeline(Readable.from([data]), createGunzip(), extract);
  } catch (err) {
    if (err instanceof DomainError) throw err;
    throw bad(`bundle is not a valid tar.gz: ${(err as Error).message}`);
  }
  return files;
}

/**
 * Checks a config bundle: gzip'd tar, only plain files and directories with safe names,
 * and a config.yml that parses as a YAML mapping next to a PEM ca.crt.
 */
export async function inspectBundle(data: Buffer, limits: BundleLimits): Promise<InspectedBundle> {
  const files = await readBundleEntries(data, limits, (name) => (REQUIRED_FILES as readonly string[]).includes(name));
  checkRequiredFiles(files, REQUIRED_FILES);
  return {
    data,
    sha256: createHash('sha256').update(data).digest('hex'),
    files: [...files.keys()].sort(),
    configYml: files.get('config.yml')!.toString('utf8'),
  };
}

/** Every required file is present, config.yml is a YAML mapping and ca.crt looks like PEM. */
export function checkRequiredFiles(files: Map<string, Buffer | null>, required: readonly string[]): void {
  for (const name of required) {
    if (!files.has(name)) throw bad(`bundle lacks ${name}`);
  }
  checkConfigYaml(files.get('config.yml')!);
  if (!files.get('ca.crt')!.toString('utf8').includes('-----BEGIN ')) throw bad('ca.crt is not a PEM certificate');
}

function checkConfigYaml(raw: Buffer): void {
  const doc = YAML.parseDocument(raw.toString('utf8'), { uniqueKeys: true });
  if (doc.errors.length > 0) throw bad(`config.yml is not valid YAML: ${doc.errors[0]!.message.split('\n')[0]}`);
  const value: unknown = doc.toJS();
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad('config.yml must be a YAML mapping');
}
