import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DomainError } from './errors.js';

/**
 * The real `nebula-cert` binary, so that certificates are exactly what Nebula itself makes and
 * accepts. Every call runs in its own private temp dir (mkdtemp: mode 0700, files 0600) that is
 * removed afterwards, whatever happens. Key material only ever travels through those files: it
 * is never on a command line (visible in `ps`) and never in an error message (nebula-cert's own
 * messages name paths, not contents).
 */

/** nebula-cert ran and refused: its one-line message. */
export class NebulaCertError extends Error {}

export interface CertInfo {
  name: string;
  ips: string[];
  subnets: string[];
  groups: string[];
  isCa: boolean;
  /** Fingerprint of the signing CA; empty for a CA. */
  issuer: string;
  publicKey: string;
  /** ISO 8601. */
  notBefore: string;
  notAfter: string;
  /** What Nebula's `pki.blocklist` lists. */
  fingerprint: string;
}

export interface NebulaCertOptions {
  bin: string;
  /** Parent of the per-call temp dirs; the OS temp dir by default. */
  tmpRoot?: string;
  timeoutMs?: number;
}

export interface SignRequest {
  caCert: string;
  caKey: string;
  /** PEM from `nebula-cert keygen`; the private half stays on the host. */
  publicKey: string;
  name: string;
  /** Address and network, e.g. 10.42.0.7/16. */
  ip: string;
  groups: string[];
  /** Unsafe routes the host may serve. */
  subnets: string[];
  /** 0: until one second before the CA expires (nebula-cert's own rule). */
  durationS: number;
}

export class NebulaCert {
  constructor(private readonly opts: NebulaCertOptions) {}

  /** `Version: 1.6.1` -> `1.6.1`; rejects with PKI_UNAVAILABLE when the binary cannot run. */
  async version(): Promise<string> {
    const out = await this.run(['-version'], this.opts.tmpRoot ?? os.tmpdir());
    return out.replace(/^Version:\s*/i, '').trim();
  }

  async createCa(req: { name: string; durationS: number; ips: string[] }): Promise<{ cert: string; key: string }> {
    return this.withDir(async (dir) => {
      const args = ['ca', `-name=${req.name}`, `-duration=${req.durationS}s`, '-out-crt=ca.crt', '-out-key=ca.key'];
      if (req.ips.length) args.push(`-ips=${req.ips.join(',')}`);
      await this.run(args, dir);
      const [cert, key] = await Promise.all([readFile(path.join(dir, 'ca.crt'), 'utf8'), readFile(path.join(dir, 'ca.key'), 'utf8')]);
      return { cert, key };
    });
  }

  /** A host certificate for a public key; nebula-cert enforces the CA's own ip/group constraints. */
  async signHost(req: SignRequest): Promise<string> {
    return this.withDir(async (dir) => {
      await Promise.all([put(dir, 'ca.crt', req.caCert), put(dir, 'ca.key', req.caKey), put(dir, 'host.pub', req.publicKey)]);
      const args = ['sign', '-ca-crt=ca.crt', '-ca-key=ca.key', '-in-pub=host.pub', '-out-crt=host.crt', `-name=${req.name}`, `-ip=${req.ip}`];
      if (req.groups.length) args.push(`-groups=${req.groups.join(',')}`);
      if (req.subnets.length) args.push(`-subnets=${req.subnets.join(',')}`);
      if (req.durationS > 0) args.push(`-duration=${req.durationS}s`);
      await this.run(args, dir);
      return readFile(path.join(dir, 'host.crt'), 'utf8');
    });
  }

  /**
   * Makes a key pair in `dir` (which the caller owns): the private key is written there with
   * mode 0600 and never read into this process.
   */
  async keygen(dir: string, files: { key: string; pub: string }): Promise<void> {
    await this.run(['keygen', `-out-key=${files.key}`, `-out-pub=${files.pub}`], dir);
    await chmod(path.join(dir, files.key), 0o600);
  }

  async print(cert: string): Promise<CertInfo> {
    return this.withDir(async (dir) => {
      await put(dir, 'x.crt', cert);
      const raw = JSON.parse(await this.run(['print', '-json', '-path=x.crt'], dir)) as {
        details: Omit<CertInfo, 'fingerprint'>;
        fingerprint: string;
      };
      const d = raw.details;
      return {
        name: d.name,
        ips: d.ips ?? [],
        subnets: d.subnets ?? [],
        groups: d.groups ?? [],
        isCa: d.isCa,
        issuer: d.issuer,
        publicKey: d.publicKey,
        notBefore: new Date(d.notBefore).toISOString(),
        notAfter: new Date(d.notAfter).toISOString(),
        fingerprint: raw.fingerprint,
      };
    });
  }

  /** Whether `cert` is unexpired and signed by one of the CAs in `caCerts`; the reason if not. */
  async verify(caCerts: string, cert: string): Promise<{ valid: true } | { valid: false; reason: string }> {
    return this.withDir(async (dir) => {
      await Promise.all([put(dir, 'ca.crt', caCerts), put(dir, 'x.crt', cert)]);
      try {
        await this.run(['verify', '-ca=ca.crt', '-crt=x.crt'], dir);
        return { valid: true };
      } catch (err) {
        if (err instanceof NebulaCertError) return { valid: false, reason: err.message };
        throw err;
      }
    });
  }

  private async withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(path.join(this.opts.tmpRoot ?? os.tmpdir(), 'nebulagc-pki-'));
    try {
      return await fn(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  private run(args: string[], cwd: string): Promise<string> {
    const bin = this.opts.bin;
    return new Promise((resolve, reject) => {
      execFile(bin, args, { cwd, timeout: this.opts.timeoutMs ?? 15_000, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const code = (err as NodeJS.ErrnoException).code;
        if (typeof code === 'string') {
          // A spawn failure (ENOENT, EACCES): the binary is missing, not the request wrong.
          return reject(unavailable(`nebula-cert cannot run (${code}) at "${bin}"; install nebula or set NEBULAGC_NEBULA_CERT_BIN`));
        }
        if (err.killed) return reject(unavailable('nebula-cert did not finish in time'));
        const line = stderr.split('\n').map((l) => l.trim()).find(Boolean) ?? `exit status ${String(code)}`;
        reject(new NebulaCertError(line.replace(/^Error:\s*/, '')));
      });
    });
  }
}

const unavailable = (message: string): DomainError => new DomainError('PKI_UNAVAILABLE', message);

const put = (dir: string, name: string, content: string): Promise<void> =>
  writeFile(path.join(dir, name), content, { mode: 0o600, flag: 'wx' });
