import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import tar from 'tar-stream';
import YAML from 'yaml';
import { renderNodeConfig, type ClusterView, type RenderNode } from './config.js';
import type { ConfigMap } from './template.js';

export interface NodeRender {
  config: ConfigMap;
  caCert: string | null;
  /** Null until the node enrolls; such a node has no bundle yet. */
  hostCert: string | null;
  /**
   * sha256 of what the node would receive, independent of the archive encoding: the node's
   * version moves exactly when this does.
   */
  contentHash: string;
}

export interface NodeBundle {
  body: Buffer;
  sha256: string;
}

export function renderNode(view: ClusterView, node: RenderNode, caCert: string | null, hostCert: string | null): NodeRender {
  const config = renderNodeConfig(view, node);
  return { config, caCert, hostCert, contentHash: contentHashOf(config, caCert, hostCert) };
}

function contentHashOf(config: ConfigMap, caCert: string | null, hostCert: string | null): string {
  return createHash('sha256')
    .update(JSON.stringify(config))
    .update('\0')
    .update(caCert ?? '')
    .update('\0')
    .update(hostCert ?? '')
    .digest('hex');
}

/**
 * config.yml, keys sorted at every level, so it reads the same whatever the template's order.
 * Written as YAML 1.1 because nebula reads it with go-yaml: strings such as "on", "yes" or
 * "0777", plain in YAML 1.2, come out quoted. No line folding, so every scalar stays on one line.
 */
export const configYaml = (config: ConfigMap): string => YAML.stringify(config, { version: '1.1', sortMapEntries: true, lineWidth: 0 });

const gzipAsync = promisify(gzip);
const EPOCH = new Date(0);

/**
 * The tar.gz a daemon downloads: config.yml, ca.crt, host.crt, always in that order, with every
 * varying header field pinned (mtime 0, mode 0644, uid/gid 0, no owner names), so equal inputs
 * give equal bytes and equal ETags.
 */
export async function packNodeBundle(r: { config: ConfigMap; caCert: string; hostCert: string }): Promise<NodeBundle> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const [name, text] of [
    ['config.yml', configYaml(r.config)],
    ['ca.crt', r.caCert],
    ['host.crt', r.hostCert],
  ] as const) {
    const content = Buffer.from(text, 'utf8');
    pack.entry({ name, size: content.length, type: 'file', mode: 0o644, mtime: EPOCH, uid: 0, gid: 0, uname: '', gname: '' }, content);
  }
  pack.finalize();
  await ended;
  // Level 1: these archives are a few KiB, and it costs half of level 9 for ~10% more bytes.
  const body = await gzipAsync(Buffer.concat(chunks), { level: 1 });
  return { body, sha256: createHash('sha256').update(body).digest('hex') };
}
