import { createHash } from 'node:crypto';
import { renderNodeConfig, type ClusterView, type RenderNode } from './config.js';
import { packTarGz } from './tar.js';
import type { ConfigMap } from './template.js';
import { toYaml } from './yaml.js';

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

/** config.yml, keys sorted at every level, so it reads the same whatever the template's order. */
export const configYaml = (config: ConfigMap): string => toYaml(config);

/** The tar.gz a daemon downloads: config.yml, ca.crt, host.crt, always in that order. */
export function packNodeBundle(r: { config: ConfigMap; caCert: string; hostCert: string }): NodeBundle {
  const body = packTarGz([
    { name: 'config.yml', content: Buffer.from(configYaml(r.config), 'utf8') },
    { name: 'ca.crt', content: Buffer.from(r.caCert, 'utf8') },
    { name: 'host.crt', content: Buffer.from(r.hostCert, 'utf8') },
  ]);
  return { body, sha256: createHash('sha256').update(body).digest('hex') };
}
