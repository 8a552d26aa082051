import assert from 'node:assert/strict';
import { clusterDir, freePort, startNode, waitUntil, type ServerProcess } from './cluster.js';
import { health, isMaster } from './probes.js';
import { TcpGate } from './tcp-gate.js';

export interface CoordinatorSpec {
  kind: 'etcd' | 'consul';
  /** etcd: client URLs, comma-separated; Consul: the HTTP API address. */
  endpoints: string;
}

export interface AutoClusterOptions {
  names?: string[];
  /** Env for every node (after the auto-mode defaults). */
  env?: Record<string, string>;
  /** Env for one node, by name. */
  perNode?: Record<string, Record<string, string>>;
  /** Each node advertises its API through a TcpGate, so a test can cut it off from its peers. */
  gateApi?: boolean;
  /** Each node reaches the coordinator (its first endpoint) through a TcpGate of its own. */
  gateCoordinator?: boolean;
  /** Wait for one master and the rest following (default true). */
  settle?: boolean;
}

export interface AutoCluster {
  root: string;
  members: ServerProcess[];
  apiGates: Map<string, TcpGate>;
  coordinatorGates: Map<string, TcpGate>;
  /** Starts a killed or stopped node again: same name, port, env and data. */
  restart(n: ServerProcess): Promise<ServerProcess>;
  /** Kills whatever is left, closes the gates, removes the data. */
  remove(): Promise<void>;
}

const alive = (n: ServerProcess): boolean => n.child.exitCode === null && n.child.signalCode === null;

/** The live node answering /health/master 200, if any. */
export async function masterOf(members: ServerProcess[]): Promise<ServerProcess | undefined> {
  for (const m of members) if (alive(m) && (await isMaster(m).catch(() => false))) return m;
  return undefined;
}

export interface MasterWatch {
  /** Stops sampling; `most` is the largest number of nodes that answered 200 at once, `masters` each new sole master in turn. */
  stop(): Promise<{ most: number; masters: string[] }>;
}

/** Samples every node's /health/master every 50 ms until stopped. */
export function masterWatch(nodes: () => ServerProcess[]): MasterWatch {
  let most = 0;
  const masters: string[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const up = nodes();
      const answers = await Promise.all(up.map((n) => isMaster(n).catch(() => false)));
      const now = up.filter((_, i) => answers[i]).map((n) => n.name);
      most = Math.max(most, now.length);
      if (now.length === 1 && masters.at(-1) !== now[0]) masters.push(now[0]!);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { most, masters };
    },
  };
}

/** Nodes started with NEBULAGC_HA_MODE=auto on one coordinator; by default waits for one master and the rest following. */
export async function startAutoCluster(label: string, coordinator: CoordinatorSpec, opts: AutoClusterOptions = {}): Promise<AutoCluster> {
  const dir = clusterDir(label);
  const names = opts.names ?? ['n1', 'n2', 'n3'];
  const apiGates = new Map<string, TcpGate>();
  const coordinatorGates = new Map<string, TcpGate>();
  const envs = new Map<string, Record<string, string>>();
  const ports = new Map<string, number>();
  for (const name of names) {
    const port = await freePort();
    ports.set(name, port);
    let endpoints = coordinator.endpoints;
    if (opts.gateCoordinator) {
      const gate = await TcpGate.open(Number(new URL(coordinator.endpoints.split(',')[0]!).port));
      coordinatorGates.set(name, gate);
      endpoints = gate.url;
    }
    const env: Record<string, string> = {
      NEBULAGC_HA_MODE: 'auto',
      NEBULAGC_COORDINATOR: coordinator.kind,
      NEBULAGC_CLUSTER_NAME: `test/${label}`,
      ...(coordinator.kind === 'etcd' ? { NEBULAGC_ETCD_ENDPOINTS: endpoints, NEBULAGC_LOCK_TTL_S: '2' } : { NEBULAGC_CONSUL_ADDR: endpoints }),
      ...opts.env,
      ...opts.perNode?.[name],
    };
    if (opts.gateApi) {
      const gate = await TcpGate.open(port);
      apiGates.set(name, gate);
      env.NEBULAGC_ADVERTISE_URL = gate.url;
    }
    envs.set(name, env);
  }
  const members = await Promise.all(names.map((name) => startNode(name, dir.root, envs.get(name)!, ports.get(name)!)));
  const all = [...members];
  const cluster: AutoCluster = {
    root: dir.root,
    members,
    apiGates,
    coordinatorGates,
    async restart(n) {
      const back = await startNode(n.name, dir.root, envs.get(n.name)!, n.port);
      all.push(back);
      return back;
    },
    async remove() {
      for (const n of all) if (alive(n)) n.child.kill('SIGCONT');
      await Promise.all(all.map((n) => n.kill9()));
      for (const g of [...apiGates.values(), ...coordinatorGates.values()]) await g.close();
      dir.remove();
    },
  };
  if (opts.settle === false) return cluster;
  const settled = await waitUntil(async () => {
    const states = await Promise.all(members.map(async (m) => (await health(m)).ha_state as string));
    return states.filter((s) => s === 'master.serving').length === 1 && states.filter((s) => s === 'replica.following').length === members.length - 1;
  }, 40_000);
  if (!settled) {
    const out = members.map((m) => `${m.name}:\n${m.output().slice(-1500)}`).join('\n---\n');
    await cluster.remove();
    assert.fail(`one master and the rest following replicas:\n${out}`);
  }
  return cluster;
}
