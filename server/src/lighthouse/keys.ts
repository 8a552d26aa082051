import { access, mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { NebulaCert } from '../domain/nebula-cert.js';
import { FILES } from './nebula-config.js';

/**
 * The lighthouse's key pair for one cluster, made on this server in the cluster's own 0700
 * directory. Only the public key is ever read into this process (to be signed); the private
 * key stays in its 0600 file for nebula.
 */
export async function ensureKeyPair(tool: NebulaCert, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const key = path.join(dir, FILES.key);
  const pub = path.join(dir, FILES.pub);
  const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false);
  if (!((await exists(key)) && (await exists(pub)))) {
    // Half a pair (a crash during keygen) is useless; nebula-cert refuses to overwrite files.
    await Promise.all([rm(key, { force: true }), rm(pub, { force: true })]);
    await tool.keygen(dir, { key: FILES.key, pub: FILES.pub });
  }
  return readFile(pub, 'utf8');
}

/** The raw key as hex, the form `nebula-cert print -json` shows a certificate's public key in. */
export function publicKeyHex(pem: string): string {
  const body = pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  return Buffer.from(body, 'base64').toString('hex');
}
