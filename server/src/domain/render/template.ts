import YAML from 'yaml';
import { DomainError } from '../errors.js';

export type ConfigMap = { [key: string]: unknown };

/**
 * What a cluster renders from before any bundle is uploaded: a working host that lets every
 * certificate of the cluster's CA reach it (the CA is the cluster's own, so "any" means "any
 * member"). Operators narrow the firewall by uploading a template.
 */
export const DEFAULT_TEMPLATE: ConfigMap = deepFreeze<ConfigMap>({
  listen: { host: '0.0.0.0', port: 0 },
  punchy: { punch: true },
  lighthouse: { am_lighthouse: false, interval: 60, hosts: [] },
  tun: { disabled: false, dev: 'nebula1', drop_local_broadcast: false, drop_multicast: false, tx_queue: 500, mtu: 1300 },
  logging: { level: 'info', format: 'text' },
  firewall: {
    conntrack: { tcp_timeout: '12m', udp_timeout: '3m', default_timeout: '10m' },
    outbound: [{ port: 'any', proto: 'any', host: 'any' }],
    inbound: [{ port: 'any', proto: 'any', host: 'any' }],
  },
});

export interface TemplateSource {
  clusterId: string;
  bundleVersion: number;
  sha256: string;
  /**
   * The bundle's config.yml as stored at upload; null for a bundle stored before that column
   * existed and not backfilled yet. Only called on a cache miss.
   */
  load(): string | null;
}

const MAX_CACHED = 64;
const cache = new Map<string, ConfigMap>();

/**
 * The parsed config.yml of a cluster's bundle. A stored bundle version never changes, so the
 * parse is kept per (cluster, version, sha256): every write re-renders the cluster.
 */
export function templateOf(source: TemplateSource | undefined): ConfigMap {
  if (!source) return DEFAULT_TEMPLATE;
  const key = `${source.clusterId}\0${source.bundleVersion}\0${source.sha256}`;
  const hit = cache.get(key);
  if (hit) {
    cache.delete(key);
    cache.set(key, hit);
    return hit;
  }
  const text = source.load();
  // Rendering from a guess would serve, and cache per node version, a config the master never
  // decided on; a replica answers 503 for the moment until the master's backfill reaches it.
  if (text === null) throw new DomainError('NOT_READY', 'the cluster’s template is being backfilled; retry shortly');
  const parsed = parseTemplate(text);
  cache.set(key, parsed);
  if (cache.size > MAX_CACHED) cache.delete(cache.keys().next().value!);
  return parsed;
}

/** A text that is not a mapping (the empty one the backfill leaves for an unreadable bundle) renders as the built-in template. */
export function parseTemplate(text: string): ConfigMap {
  const value: unknown = YAML.parse(text);
  return isMap(value) ? deepFreeze(value) : DEFAULT_TEMPLATE;
}

export const isMap = (v: unknown): v is ConfigMap => v !== null && typeof v === 'object' && !Array.isArray(v);

function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object') {
    for (const child of Object.values(v)) deepFreeze(child);
    Object.freeze(v);
  }
  return v;
}
