import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { lastLine, runCommand } from './command.js';
import type { ClusterConfig } from './config.js';
import { writeFileAtomic } from './files.js';
import { describeFailure, errorCodeOf, type ServerPool } from './server-pool.js';

/** What the state dir remembers about the signed certificate. */
export interface Enrollment {
  fingerprint: string;
  expires_at: string;
  enrolled_at: string;
}

interface EnrollReply {
  certificate: string;
  ca_certificate: string;
  fingerprint: string;
  expires_at: string;
}

/** The server may answer 409 CONFLICT while another enrollment for the node is in flight. */
export class EnrollRetry extends Error {}

export const keyPath = (c: ClusterConfig): string => path.join(c.stateDir, 'host.key');
const pubPath = (c: ClusterConfig): string => path.join(c.stateDir, 'host.pub');
const recordPath = (c: ClusterConfig): string => path.join(c.stateDir, 'enrollment.json');

export function prepareStateDir(c: ClusterConfig): void {
  mkdirSync(c.stateDir, { recursive: true, mode: 0o700 });
  chmodSync(c.stateDir, 0o700);
}

/**
 * The host's key pair, made here with `nebula-cert keygen` on first use. The private key is
 * written under temp names and renamed, so a crash mid-keygen never leaves half a key.
 */
export async function ensureKeyPair(c: ClusterConfig): Promise<string> {
  prepareStateDir(c);
  if (!existsSync(keyPath(c)) || !existsSync(pubPath(c))) {
    const tmpKey = `${keyPath(c)}.tmp`;
    const tmpPub = `${pubPath(c)}.tmp`;
    rmSync(tmpKey, { force: true });
    rmSync(tmpPub, { force: true });
    const r = await runCommand(c.nebulaCertBin, ['keygen', '-out-key', tmpKey, '-out-pub', tmpPub]);
    if (r.code !== 0) throw new Error(`nebula-cert keygen failed: ${lastLine(r.output)}`);
    chmodSync(tmpKey, 0o600);
    renameSync(tmpKey, keyPath(c));
    renameSync(tmpPub, pubPath(c));
  }
  chmodSync(keyPath(c), 0o600);
  return readFileSync(pubPath(c), 'utf8');
}

export function readEnrollment(c: ClusterConfig): Enrollment | null {
  try {
    return JSON.parse(readFileSync(recordPath(c), 'utf8')) as Enrollment;
  } catch {
    return null;
  }
}

/** Sends the public key (never the private one), and stores what the server signed. */
export async function enroll(c: ClusterConfig, pool: ServerPool): Promise<Enrollment> {
  const publicKey = await ensureKeyPair(c);
  const reply = await pool.request('POST', '/api/v1/enroll', { json: { public_key: publicKey } });
  if (reply.status === 409 && errorCodeOf(reply) === 'CONFLICT') throw new EnrollRetry(`enrollment: ${describeFailure(reply)}`);
  if (reply.status !== 200) throw new Error(`enrollment refused: ${describeFailure(reply)}`);
  const body = JSON.parse(reply.body.toString('utf8')) as EnrollReply;
  writeFileAtomic(path.join(c.stateDir, 'host.crt'), body.certificate, 0o644);
  writeFileAtomic(path.join(c.stateDir, 'ca.crt'), body.ca_certificate, 0o644);
  const record: Enrollment = { fingerprint: body.fingerprint, expires_at: body.expires_at, enrolled_at: new Date().toISOString() };
  writeFileAtomic(recordPath(c), JSON.stringify(record, null, 2) + '\n', 0o600);
  return record;
}

/** Renew at two thirds of the certificate's lifetime, so a renewal that keeps failing still has a third to succeed in. */
export function renewalDue(e: Enrollment, now = Date.now()): boolean {
  const start = Date.parse(e.enrolled_at);
  const end = Date.parse(e.expires_at);
  if (!Number.isFinite(start) || !Number.isFinite(end)) return true;
  return now >= start + ((end - start) * 2) / 3;
}
