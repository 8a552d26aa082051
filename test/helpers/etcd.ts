import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitUntil } from './cluster.js';

export interface EtcdServer {
  endpoint: string;
  output(): string;
  stop(): Promise<void>;
}

interface MemberSpec {
  name: string;
  client: string;
  peer: string;
  dir: string;
}

export interface EtcdMember {
  name: string;
  endpoint: string;
  readonly running: boolean;
  /** SIGKILL, keeping its data dir. */
  kill9(): Promise<void>;
  /** Starts it again on the same ports and data. */
  start(): Promise<void>;
}

export interface EtcdCluster {
  /** Every member's client URL, comma-separated, as NEBULAGC_ETCD_ENDPOINTS takes them. */
  endpoints: string;
  members: EtcdMember[];
  output(): string;
  stop(): Promise<void>;
}

async function specs(n: number): Promise<MemberSpec[]> {
  const out: MemberSpec[] = [];
  for (let i = 0; i < n; i++) {
    out.push({
      name: `e${i}`,
      client: `http://127.0.0.1:${await freePort()}`,
      peer: `http://127.0.0.1:${await freePort()}`,
      dir: mkdtempSync(path.join(os.tmpdir(), 'nebulagc-etcd-')),
    });
  }
  return out;
}

/** Real etcd members (Debian's etcd-server) on free loopback ports, each with a temp data dir. */
export async function startEtcdCluster(size: number): Promise<EtcdCluster> {
  const all = await specs(size);
  const initial = all.map((s) => `${s.name}=${s.peer}`).join(',');
  let out = '';
  const members = all.map((s) => {
    let child: ChildProcess | undefined;
    let exited: Promise<void> = Promise.resolve();
    const m: EtcdMember = {
      name: s.name,
      endpoint: s.client,
      get running() {
        return child !== undefined && child.exitCode === null && child.signalCode === null;
      },
      async kill9() {
        if (m.running) child!.kill('SIGKILL');
        await exited;
      },
      async start() {
        child = spawn(
          'etcd',
          [
            '--name', s.name, '--data-dir', s.dir,
            '--listen-client-urls', s.client, '--advertise-client-urls', s.client,
            '--listen-peer-urls', s.peer, '--initial-advertise-peer-urls', s.peer,
            '--initial-cluster', initial, '--initial-cluster-state', 'new', '--initial-cluster-token', `t-${all[0]!.peer}`,
            '--log-level', 'warn',
          ],
          { stdio: ['ignore', 'pipe', 'pipe'] },
        );
        const append = (b: Buffer): void => void (out = (out + `[${s.name}] ` + b.toString()).slice(-40_000));
        child.stdout!.on('data', append);
        child.stderr!.on('data', append);
        const c = child;
        exited = new Promise<void>((r) => c.once('exit', () => r()));
      },
    };
    return m;
  });
  const cluster: EtcdCluster = {
    endpoints: members.map((m) => m.endpoint).join(','),
    members,
    output: () => out,
    async stop() {
      await Promise.all(members.map((m) => m.kill9()));
      for (const s of all) rmSync(s.dir, { recursive: true, force: true });
    },
  };
  await Promise.all(members.map((m) => m.start()));
  // A member answers /health with 200 only once the cluster has a leader.
  const up = await waitUntil(async () => (await fetch(`${members[0]!.endpoint}/health`)).ok, 20_000, 100);
  if (!up) {
    await cluster.stop();
    throw new Error(`etcd did not come up:\n${out}`);
  }
  return cluster;
}

/** One real etcd member, for tests that need no quorum games. */
export async function startEtcd(): Promise<EtcdServer> {
  const cluster = await startEtcdCluster(1);
  return { endpoint: cluster.endpoints, output: cluster.output, stop: cluster.stop };
}
