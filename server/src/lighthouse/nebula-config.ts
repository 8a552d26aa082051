import { createHash } from 'node:crypto';
import { rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';

export const FILES = { ca: 'ca.crt', cert: 'host.crt', key: 'host.key', pub: 'host.pub', config: 'config.yml' } as const;

export interface LighthouseSpec {
  caCert: string;
  cert: string;
  blocklist: string[];
  listenHost: string;
  port: number;
}

export interface RenderedConfig {
  files: Record<string, string>;
  /** Changes exactly when what nebula would load changes: the trigger for a restart. */
  sha256: string;
}

/**
 * The nebula config of a built-in lighthouse: no tun device (it only answers host queries and
 * punches), the cluster CA and blocklist, and absolute paths into its own directory, so it
 * does not depend on the working directory.
 */
export function renderLighthouseConfig(dir: string, spec: LighthouseSpec): RenderedConfig {
  const config = {
    pki: {
      ca: path.join(dir, FILES.ca),
      cert: path.join(dir, FILES.cert),
      key: path.join(dir, FILES.key),
      blocklist: [...spec.blocklist].sort(),
    },
    static_host_map: {},
    lighthouse: { am_lighthouse: true, interval: 60, hosts: [] },
    listen: { host: spec.listenHost, port: spec.port },
    punchy: { punch: true },
    tun: { disabled: true },
    logging: { level: 'info', format: 'json' },
    firewall: {
      outbound: [{ port: 'any', proto: 'any', host: 'any' }],
      inbound: [{ port: 'any', proto: 'icmp', host: 'any' }],
    },
  };
  const files: Record<string, string> = { [FILES.ca]: spec.caCert, [FILES.cert]: spec.cert, [FILES.config]: stringify(config) };
  const hash = createHash('sha256');
  for (const name of Object.keys(files).sort()) hash.update(`${name}\0${files[name]}\0`);
  return { files, sha256: hash.digest('hex') };
}

/** Each file is replaced whole (write then rename), so a starting nebula never reads half a file. */
export async function writeLighthouseConfig(dir: string, rendered: RenderedConfig): Promise<void> {
  for (const [name, content] of Object.entries(rendered.files)) {
    const tmp = path.join(dir, `.${name}.tmp`);
    await writeFile(tmp, content, { mode: 0o600 });
    await rename(tmp, path.join(dir, name));
  }
}
