import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { makeTarGz, type Entry } from './bundle.js';

export const NODE_TOKEN = 'fake-node-token-0123456789abcdef';

/** A config.yml that passes `nebula -test` without root: tun disabled, no lighthouse duty, a loopback port. */
export function nebulaConfig(revision: number, extra = ''): string {
  return [
    `# revision: ${revision}`,
    'pki: {ca: ca.crt, cert: host.crt, key: host.key}',
    'static_host_map: {}',
    'lighthouse: {am_lighthouse: false}',
    'listen: {host: 127.0.0.1, port: 0}',
    'tun: {disabled: true}',
    'firewall:',
    '  outbound: [{port: any, proto: any, host: any}]',
    '  inbound: [{port: any, proto: any, host: any}]',
    extra,
  ].join('\n');
}

export interface SeenRequest {
  server: string;
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * What a real control plane holds for one node: a CA made with the real nebula-cert, the node's
 * signed certificate once it enrolls, its rendered config and version, and its routes. Several
 * FakeServers can serve the same state, as replicas do.
 */
export class FakeCluster {
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-fakecp-'));
  version = 1;
  bundle: Buffer | null = null;
  /** When set, announced instead of the bundle's real sha256. */
  announceSha: string | null = null;
  certificate: string | null = null;
  routes: string[] = [];
  /** `nebula-cert sign -duration` of the host certificates it signs. */
  certDuration = '2h';
  /** When set, PUT /api/v1/routes answers 400 with this message. */
  refuseRoutes: string | null = null;
  readonly requests: SeenRequest[] = [];
  private configYaml = nebulaConfig(1);
  private rawBundle: Buffer | null = null;
  private readonly waiters = new Set<() => void>();
  readonly caCert: string;

  constructor() {
    execFileSync('nebula-cert', ['ca', '-name', 'fake-ca', '-out-crt', 'ca.crt', '-out-key', 'ca.key'], { cwd: this.dir });
    this.caCert = readFileSync(path.join(this.dir, 'ca.crt'), 'utf8');
  }

  /** A new rendered config: the version moves and held polls wake up. */
  async setConfig(yaml: string): Promise<void> {
    this.configYaml = yaml;
    this.rawBundle = null;
    await this.bump();
  }

  /** A bundle of the test's own making (hostile on purpose), served as is. */
  async setRawBundle(entries: Entry[] | Buffer): Promise<void> {
    this.rawBundle = Buffer.isBuffer(entries) ? entries : await makeTarGz(entries);
    await this.bump();
  }

  /** Signs the posted public key with the real nebula-cert, as the server's enrollment does. */
  enroll(publicKey: string): Record<string, string> {
    writeFileSync(path.join(this.dir, 'host.pub'), publicKey);
    rmSync(path.join(this.dir, 'host.crt'), { force: true });
    execFileSync(
      'nebula-cert',
      ['sign', '-ca-crt', 'ca.crt', '-ca-key', 'ca.key', '-name', 'host1', '-ip', '10.42.0.2/24', '-in-pub', 'host.pub', '-out-crt', 'host.crt', '-duration', this.certDuration],
      { cwd: this.dir },
    );
    this.certificate = readFileSync(path.join(this.dir, 'host.crt'), 'utf8');
    const printed = JSON.parse(execFileSync('nebula-cert', ['print', '-json', '-path', 'host.crt'], { cwd: this.dir, encoding: 'utf8' })) as {
      fingerprint: string;
      details: { notAfter: string };
    };
    return { certificate: this.certificate, ca_certificate: this.caCert, fingerprint: printed.fingerprint, expires_at: printed.details.notAfter };
  }

  async currentBundle(): Promise<Buffer> {
    if (this.rawBundle) return this.rawBundle;
    if (!this.bundle) {
      this.bundle = await makeTarGz([
        { name: 'config.yml', content: this.configYaml },
        { name: 'ca.crt', content: this.caCert },
        { name: 'host.crt', content: this.certificate ?? '' },
      ]);
    }
    return this.bundle;
  }

  /** Resolves when the version moves past `index`, or after `ms`. */
  waitForChange(index: number, ms: number): Promise<void> {
    if (this.version !== index) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
    });
  }

  seen(method: string, p: string): SeenRequest[] {
    return this.requests.filter((r) => r.method === method && r.path.split('?')[0] === p);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async bump(): Promise<void> {
    this.bundle = null;
    this.version++;
    for (const wake of [...this.waiters]) wake();
  }
}

export interface FakeServerOptions {
  /** Answer blocking polls (with X-NebulaGC-Index); false acts as a server from before them. */
  blocking?: boolean;
  /** Send writes (POST, PUT) to this URL with a 307, as a replica does. */
  redirectWritesTo?: string;
}

/** One control-plane server on 127.0.0.1 speaking the daemon's side of the API. */
export class FakeServer {
  private server: http.Server | null = null;
  port = 0;

  constructor(
    readonly cluster: FakeCluster,
    readonly options: FakeServerOptions = {},
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Listens on its old port again when restarted, so the daemon's server list stays valid. */
  async start(): Promise<this> {
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        this.handle(req, Buffer.concat(chunks).toString('utf8'), res).catch((err: Error) => {
          res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: err.message, code: 'INTERNAL' }));
        });
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', resolve);
    });
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
    return this;
  }

  /** Closes the listener and every open connection, held polls included: a dead server. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = null;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, body: string, res: http.ServerResponse): Promise<void> {
    const c = this.cluster;
    const url = new URL(req.url ?? '/', this.url);
    c.requests.push({ server: this.url, method: req.method ?? '', path: url.pathname + url.search, headers: req.headers, body });
    const json = (status: number, value: unknown, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(value));
    };
    if (req.headers['x-nebulagc-node-token'] !== NODE_TOKEN) return json(401, { error: 'bad token', code: 'AUTH_INVALID' });
    if (this.options.redirectWritesTo && req.method !== 'GET') {
      const location = this.options.redirectWritesTo + url.pathname + url.search;
      return json(307, { error: 'not the master', code: 'NOT_MASTER', master_url: this.options.redirectWritesTo }, {
        location,
        'x-nebulagc-master-url': this.options.redirectWritesTo,
      });
    }
    const route = `${req.method} ${url.pathname}`;
    switch (route) {
      case 'POST /api/v1/enroll': {
        const parsed = JSON.parse(body) as { public_key?: string };
        if (!parsed.public_key) return json(400, { error: 'public_key required', code: 'VALIDATION_FAILED' });
        const reply = c.enroll(parsed.public_key);
        await c.setConfig(nebulaConfig(c.version + 1));
        return json(200, reply);
      }
      case 'GET /api/v1/config/version': {
        const index = url.searchParams.get('index');
        const wait = Number((url.searchParams.get('wait') ?? '30s').replace(/s$/, ''));
        if (this.options.blocking === false) return json(200, { config_version: c.version });
        if (index !== null) await c.waitForChange(Number(index), Math.min(wait, 60) * 1000);
        return json(200, { version: c.version, sha256: 'x' }, { 'x-nebulagc-index': String(c.version) });
      }
      case 'GET /api/v1/config/bundle': {
        if (!c.certificate) return json(409, { error: 'enroll first', code: 'NOT_ENROLLED' });
        const data = await c.currentBundle();
        const sha = createHash('sha256').update(data).digest('hex');
        const headers = { etag: `"${sha}"`, 'x-nebulagc-bundle-sha256': c.announceSha ?? sha, 'x-nebulagc-bundle-version': String(c.version) };
        if (req.headers['if-none-match'] === `"${sha}"`) {
          res.writeHead(304, headers).end();
          return;
        }
        res.writeHead(200, { ...headers, 'content-type': 'application/gzip' }).end(data);
        return;
      }
      case 'POST /api/v1/heartbeat':
        return json(202, { accepted: true, last_seen_at: new Date().toISOString() });
      case 'GET /api/v1/routes':
        return json(200, { node_id: 'n1', name: 'host1', overlay_ip: '10.42.0.2', routes: c.routes });
      case 'PUT /api/v1/routes': {
        if (c.refuseRoutes) return json(400, { error: c.refuseRoutes, code: 'VALIDATION_FAILED' });
        c.routes = (JSON.parse(body) as { routes: string[] }).routes;
        return json(200, { node_id: 'n1', name: 'host1', overlay_ip: '10.42.0.2', routes: c.routes });
      }
      default:
        return json(404, { error: `no route ${route}`, code: 'NOT_FOUND' });
    }
  }
}
