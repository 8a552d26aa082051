import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, waitUntil } from './cluster.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const NGINX_CONF = path.join(REPO, 'nginx/nebulagc.conf');
const SHIPPED_ADDRESSES = ['10.0.0.11:8080', '10.0.0.12:8080', '10.0.0.13:8080'];

export interface Nginx {
  url: string;
  output(): string;
  stop(): Promise<void>;
}

/**
 * A main nginx.conf that runs unprivileged files out of `dir` and includes `include` in its
 * http block, as /etc/nginx/nginx.conf includes conf.d.
 */
function mainConf(dir: string, include: string): string {
  return [
    ...(process.getuid?.() === 0 ? ['user root;'] : []),
    'worker_processes 1;',
    'daemon off;',
    `pid ${dir}/nginx.pid;`,
    `error_log ${dir}/error.log info;`,
    'events { worker_connections 1024; }',
    'http {',
    `  access_log ${dir}/access.log;`,
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${dir}/${t}_temp;`),
    `  include ${include};`,
    '}',
    '',
  ].join('\n');
}

/** `nginx -t` on the shipped file, included as it would be in production: its exit status and output. */
export function checkShippedNginx(): { status: number | null; output: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-nginx-t-'));
  try {
    const conf = path.join(dir, 'nginx.conf');
    writeFileSync(conf, mainConf(dir, NGINX_CONF));
    const r = spawnSync('nginx', ['-t', '-p', dir, '-c', conf], { encoding: 'utf8' });
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs the real nginx with the shipped nginx/nebulagc.conf, its three nodes replaced by `nodeUrls`. */
export async function startNginx(nodeUrls: string[]): Promise<Nginx> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-nginx-'));
  chmodSync(dir, 0o755);
  for (const t of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(path.join(dir, `${t}_temp`));
  const port = await freePort();
  let site = readFileSync(NGINX_CONF, 'utf8');
  SHIPPED_ADDRESSES.forEach((addr, i) => {
    if (!site.includes(addr)) throw new Error(`nebulagc.conf no longer names ${addr}`);
    site = site.replaceAll(addr, new URL(nodeUrls[i]!).host);
  });
  if (!site.includes('listen 8080;')) throw new Error('nebulagc.conf no longer listens on 8080');
  site = site.replace('listen 8080;', `listen 127.0.0.1:${port};`);
  writeFileSync(path.join(dir, 'nebulagc.conf'), site);
  const conf = path.join(dir, 'nginx.conf');
  writeFileSync(conf, mainConf(dir, path.join(dir, 'nebulagc.conf')));
  let out = '';
  const child: ChildProcess = spawn('nginx', ['-p', dir, '-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-100_000)));
  const nginx: Nginx = {
    url: `http://127.0.0.1:${port}`,
    output: () => {
      try {
        return out + readFileSync(path.join(dir, 'error.log'), 'utf8').slice(-20_000);
      } catch {
        return out;
      }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        // QUIT would wait for held polls; the test is done with them.
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const up = await waitUntil(async () => (await fetch(`${nginx.url}/health/live`).catch(() => undefined))?.ok === true, 10_000, 100);
  if (!up) {
    await nginx.stop();
    throw new Error(`nginx did not start:\n${nginx.output()}`);
  }
  return nginx;
}
