import { isMap, type ConfigMap } from './template.js';

/** What one node's config depends on, besides the template. */
export interface RenderNode {
  id: string;
  overlay_ip: string | null;
  mtu: number;
  routes: readonly string[];
  is_lighthouse: boolean;
  public_ip: string | null;
  /** The node's own lighthouse port, or null for the cluster's. */
  lighthouse_port: number | null;
  is_relay: boolean;
}

export interface BuiltinLighthouse {
  overlay_ip: string;
  public_host: string;
  port: number;
}

export interface ClusterRenderInputs {
  template: ConfigMap;
  lighthousePort: number;
  /** Fingerprints for pki.blocklist. */
  blocklist: readonly string[];
  nodes: readonly RenderNode[];
  builtinLighthouses: readonly BuiltinLighthouse[];
}

/** The daemon rewrites these to absolute paths in its own config directory. */
export const PKI_FILES = { ca: 'ca.crt', cert: 'host.crt', key: 'host.key' } as const;

interface Lighthouse {
  overlayIp: string;
  address: string;
  nodeId: string | undefined;
}

interface Route {
  route: string;
  via: string;
  nodeId: string;
}

/** The parts of the cluster every node's config is built from, worked out once per cluster. */
export interface ClusterView {
  inputs: ClusterRenderInputs;
  lighthouses: Lighthouse[];
  relays: { overlayIp: string; nodeId: string }[];
  routes: Route[];
  blocklist: string[];
}

const hostPort = (host: string, port: number): string => `${host.includes(':') ? `[${host}]` : host}:${port}`;
const byKey = <T>(key: (t: T) => string) => (a: T, b: T): number => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);

export function viewCluster(inputs: ClusterRenderInputs): ClusterView {
  const lighthouses: Lighthouse[] = [];
  const relays: ClusterView['relays'] = [];
  const routes: Route[] = [];
  for (const n of inputs.nodes) {
    if (n.overlay_ip === null) continue;
    if (n.is_lighthouse && n.public_ip) {
      lighthouses.push({ overlayIp: n.overlay_ip, address: hostPort(n.public_ip, n.lighthouse_port ?? inputs.lighthousePort), nodeId: n.id });
    }
    if (n.is_relay) relays.push({ overlayIp: n.overlay_ip, nodeId: n.id });
    for (const route of n.routes) routes.push({ route, via: n.overlay_ip, nodeId: n.id });
  }
  for (const b of inputs.builtinLighthouses) {
    lighthouses.push({ overlayIp: b.overlay_ip, address: hostPort(b.public_host, b.port), nodeId: undefined });
  }
  lighthouses.sort(byKey((l) => `${l.overlayIp}\0${l.address}`));
  relays.sort(byKey((r) => r.overlayIp));
  routes.sort(byKey((r) => `${r.route}\0${r.via}`));
  return { inputs, lighthouses, relays, routes, blocklist: [...new Set(inputs.blocklist)].sort() };
}

/**
 * One node's final config: the template, with everything the control plane knows about the
 * cluster laid over it. Rendered keys win; template keys that do not conflict are kept. Key
 * order is the template's, then the rendered keys' in a fixed order: deterministic, so it can
 * be hashed as it is (sorting waits until a bundle is actually served).
 */
export function renderNodeConfig(view: ClusterView, node: RenderNode): ConfigMap {
  const staticHostMap: Record<string, string[]> = {};
  const hosts: string[] = [];
  for (const l of view.lighthouses) {
    // A host never handshakes with itself: a lighthouse lists only the others.
    if (l.nodeId === node.id || l.overlayIp === node.overlay_ip) continue;
    (staticHostMap[l.overlayIp] ??= []).push(l.address);
    if (!hosts.includes(l.overlayIp)) hosts.push(l.overlayIp);
  }
  const relays = view.relays.filter((r) => r.nodeId !== node.id).map((r) => r.overlayIp);
  const unsafeRoutes = view.routes
    .filter((r) => r.nodeId !== node.id)
    .map((r) => ({ route: r.route, via: r.via, mtu: node.mtu }));

  const overlay: ConfigMap = {
    pki: { ...PKI_FILES, blocklist: view.blocklist },
    static_host_map: staticHostMap,
    lighthouse: { am_lighthouse: node.is_lighthouse, hosts },
    relay: { am_relay: node.is_relay, use_relays: true, relays },
    tun: { mtu: node.mtu, unsafe_routes: unsafeRoutes },
  };
  if (node.is_lighthouse) overlay.listen = { port: node.lighthouse_port ?? view.inputs.lighthousePort };
  return mergeInto(view.inputs.template, overlay);
}

/** Maps merge key by key; anything else (lists included) from `over` replaces what is under it. */
export function mergeInto(under: ConfigMap, over: ConfigMap): ConfigMap {
  const out: ConfigMap = { ...under };
  for (const [k, v] of Object.entries(over)) {
    const below = out[k];
    out[k] = isMap(below) && isMap(v) ? mergeInto(below, v) : v;
  }
  return out;
}
