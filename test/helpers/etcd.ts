import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitUntil } from './cluster.js';

export interface EtcdServer {
  endpoint: string;
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/** One real etcd member (Debian's etcd-server) on free loopback ports, with a temp data dir. */
export async function startEtcd(): Promise<EtcdServer> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-etcd-'));
  const client = await freePort();
  const peer = await freePort();
  const c = `http://127.0.0.1:${client}`;
  const p = `http://127.0.0.1:${peer}`;
  const child = spawn(
    'etcd',
    ['--name', 'n0', '--data-dir', dir, '--listen-client-urls', c, '--advertise-client-urls', c, '--listen-peer-urls', p, '--initial-advertise-peer-urls', p, '--initial-cluster', `n0=${p}`, '--log-level', 'warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout!.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-20_000)));
  child.stderr!.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-20_000)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const up = await waitUntil(async () => (await fetch(`${c}/health`)).ok, 15_000, 100);
  if (!up) {
    child.kill('SIGKILL');
    throw new Error(`etcd did not come up:\n${out}`);
  }
  return {
    endpoint: c,
    child,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
