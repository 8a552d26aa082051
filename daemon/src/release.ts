import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readlinkSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { checkRequiredFiles, defaultBundleLimits, readBundleEntries } from '../../server/src/domain/bundle-archive.js';
import { DomainError } from '../../server/src/domain/errors.js';
import { lastLine, runCommand } from './command.js';
import { fsyncDir, writeFileAtomic } from './files.js';

export const BUNDLE_FILES = ['config.yml', 'ca.crt', 'host.crt'] as const;

/**
 * A bundle the daemon will not apply. A permanent rejection (bad archive, failed `nebula -test`)
 * is remembered by sha256 so the same bundle is never tried again; a transient one (the bytes
 * do not match the announced sha256, as after a corrupted transfer) is retried with backoff.
 */
export class BundleRejected extends Error {
  constructor(
    readonly sha256: string,
    message: string,
    readonly permanent = true,
  ) {
    super(message);
  }
}

const releasesDir = (configDir: string): string => path.join(configDir, 'releases');
export const currentLink = (configDir: string): string => path.join(configDir, 'current');
export const currentConfigPath = (configDir: string): string => path.join(currentLink(configDir), 'config.yml');

/**
 * Checks a downloaded bundle against the sha256 the server announced, then unpacks it in
 * memory under the server's own archive rules (no traversal, no links, size and entry caps).
 */
export async function verifyBundle(body: Buffer, announced: string | null, maxBytes: number): Promise<{ sha256: string; files: Map<string, Buffer> }> {
  const sha256 = createHash('sha256').update(body).digest('hex');
  if (announced === null) throw new BundleRejected(sha256, 'the server announced no sha256 for the bundle', false);
  if (announced.toLowerCase() !== sha256) throw new BundleRejected(sha256, `sha256 mismatch: announced ${announced}, got ${sha256}`, false);
  let entries: Map<string, Buffer | null>;
  try {
    entries = await readBundleEntries(body, defaultBundleLimits(maxBytes), () => true);
    checkRequiredFiles(entries, BUNDLE_FILES);
  } catch (err) {
    if (err instanceof DomainError) throw new BundleRejected(sha256, `invalid bundle: ${err.message}`);
    throw err;
  }
  return { sha256, files: entries as Map<string, Buffer> };
}

/** The sha256 from X-NebulaGC-Bundle-Sha256, else from a strong ETag that is one. */
export function announcedSha(headers: Headers): string | null {
  const explicit = headers.get('x-nebulagc-bundle-sha256');
  if (explicit) return explicit.trim();
  const etag = /^"([0-9a-f]{64})"$/i.exec(headers.get('etag') ?? '');
  return etag ? etag[1]! : null;
}

/**
 * Writes the bundle into releases/<sha256>/ and points its pki paths at absolute files (the
 * release's certificates, the state dir's key), so nebula never depends on its working directory.
 * The directory is not live until `activate` swaps the `current` link to it.
 */
export function stageRelease(configDir: string, sha256: string, files: Map<string, Buffer>, keyFile: string): string {
  const dir = path.join(releasesDir(configDir), sha256);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o750 });
  for (const [name, content] of files) {
    if (name === 'config.yml') continue;
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true, mode: 0o750 });
    writeFileAtomic(path.join(dir, name), content, 0o640);
  }
  const doc = YAML.parseDocument(files.get('config.yml')!.toString('utf8'));
  doc.setIn(['pki', 'ca'], path.join(dir, 'ca.crt'));
  doc.setIn(['pki', 'cert'], path.join(dir, 'host.crt'));
  doc.setIn(['pki', 'key'], keyFile);
  writeFileAtomic(path.join(dir, 'config.yml'), doc.toString(), 0o640);
  fsyncDir(releasesDir(configDir));
  return dir;
}

/** `<nebula> -test -config <file>`: nebula's own check, through the same wrapper that runs it. */
export async function testConfig(nebulaBin: string[], configFile: string, sha256: string): Promise<void> {
  const r = await runCommand(nebulaBin, ['-test', '-config', configFile], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new BundleRejected(sha256, `nebula -test failed: ${lastLine(r.output)}`);
}

/** Swaps `current` to the release in one rename of a fresh symlink, then fsyncs the directory. */
export function activate(configDir: string, sha256: string): void {
  const tmp = path.join(configDir, `.current.tmp-${process.pid}`);
  rmSync(tmp, { force: true });
  symlinkSync(path.join('releases', sha256), tmp);
  renameSync(tmp, currentLink(configDir));
  fsyncDir(configDir);
}

/** The sha256 of the release `current` points at, or null when none is active. */
export function activeRelease(configDir: string): string | null {
  try {
    return path.basename(readlinkSync(currentLink(configDir)));
  } catch {
    return null;
  }
}

/** Removes every release but the ones to keep (the active one and the one before it, for rollback by hand). */
export function pruneReleases(configDir: string, keep: (string | null)[]): void {
  let names: string[];
  try {
    names = readdirSync(releasesDir(configDir));
  } catch {
    return;
  }
  for (const name of names) {
    if (!keep.includes(name)) rmSync(path.join(releasesDir(configDir), name), { recursive: true, force: true });
  }
}

export function prepareConfigDir(configDir: string): void {
  mkdirSync(releasesDir(configDir), { recursive: true, mode: 0o750 });
}
