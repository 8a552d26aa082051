import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { CertInfo } from '../../server/src/domain/nebula-cert.js';

/**
 * The host side of enrollment, with the real nebula-cert: a key pair made where the host would
 * make it (a temp dir of the test's own), and checks of what the server signed.
 */
export class NebulaHost {
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-host-'));

  /** `nebula-cert keygen`; returns the public key (PEM). */
  keygen(name = 'host'): { publicKey: string; privateKey: string } {
    execFileSync('nebula-cert', ['keygen', '-out-key', `${name}.key`, '-out-pub', `${name}.pub`], { cwd: this.dir });
    return { publicKey: this.read(`${name}.pub`), privateKey: this.read(`${name}.key`) };
  }

  /** Exit status of `nebula-cert verify -ca <ca> -crt <cert>`, and its message. */
  verify(caPem: string, certPem: string): { status: number | null; stderr: string } {
    this.write('verify-ca.crt', caPem);
    this.write('verify-host.crt', certPem);
    const r = spawnSync('nebula-cert', ['verify', '-ca', 'verify-ca.crt', '-crt', 'verify-host.crt'], { cwd: this.dir, encoding: 'utf8' });
    return { status: r.status, stderr: r.stderr };
  }

  /** `nebula-cert print -json`, as nebula-cert writes it. */
  print(certPem: string): { details: Omit<CertInfo, 'fingerprint'>; fingerprint: string } {
    this.write('print.crt', certPem);
    return JSON.parse(execFileSync('nebula-cert', ['print', '-json', '-path', 'print.crt'], { cwd: this.dir, encoding: 'utf8' }));
  }

  /** A CA of the test's own, as an operator would bring it. */
  ca(name: string, args: string[] = []): { cert: string; key: string } {
    execFileSync('nebula-cert', ['ca', '-name', name, '-out-crt', `${name}.crt`, '-out-key', `${name}.key`, ...args], { cwd: this.dir });
    return { cert: this.read(`${name}.crt`), key: this.read(`${name}.key`) };
  }

  /**
   * Runs the real `nebula -test` on a rendered bundle, as the daemon does before applying it:
   * config.yml, ca.crt and host.crt side by side with the key from `keygen(keyName)`, in a
   * directory of their own (the config names its pki files relative to it).
   */
  nebulaTest(files: Map<string, Buffer>, keyName = 'host'): { status: number | null; output: string } {
    const dir = mkdtempSync(path.join(this.dir, 'render-'));
    for (const [name, content] of files) writeFileSync(path.join(dir, name), content);
    writeFileSync(path.join(dir, 'host.key'), this.read(`${keyName}.key`));
    const r = spawnSync('nebula', ['-test', '-config', 'config.yml'], { cwd: dir, encoding: 'utf8', timeout: 20_000 });
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  private read(name: string): string {
    return readFileSync(path.join(this.dir, name), 'utf8');
  }

  private write(name: string, content: string): void {
    writeFileSync(path.join(this.dir, name), content);
  }
}
