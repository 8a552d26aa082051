import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { LighthouseConfig } from '../config.js';
import { stmt } from '../db/connection.js';
import { getRegistration, type BuiltinRegistration } from '../domain/builtin-lighthouses.js';
import type { CertInfo, NebulaCert } from '../domain/nebula-cert.js';
import type { Store } from '../domain/store.js';
import type { Logger } from '../log.js';
import { ensureKeyPair, publicKeyHex } from './keys.js';
import { FILES, renderLighthouseConfig, writeLighthouseConfig } from './nebula-config.js';
import { DEFAULT_BACKOFF, SupervisedProcess, type Backoff, type ProcessStatus } from './process.js';
import type { Registrar } from './registrar.js';

export interface LighthouseSupervisorOptions {
  store: Store;
  config: LighthouseConfig;
  serverId: string;
  tool: NebulaCert;
  register: Registrar;
  log: Logger;
  onCrash(): void;
  backoff?: Backoff;
  /** How often the change generation is compared; a commit here triggers a pass at once. */
  checkEveryMs?: number;
}

export interface LocalLighthouseStatus extends ProcessStatus {
  server_id: string;
  config_sha256: string;
}

interface ClusterRow {
  id: string;
  ca_cert: string;
  lighthouse_port: number;
}

interface Running {
  proc: SupervisedProcess;
  sha256: string;
}

const PID_FILE = 'nebula.pid';
const RETRY_MS = 5000;
/** A pass also runs this often without any change, for certificates nearing expiry. */
const TIME_CHECK_MS = 60_000;
/**
 * Passes that commits trigger are at least this far apart. A lighthouse change waits that much
 * longer (its process takes far longer to restart anyway); a master writing 1,000 commits a second
 * ran 1,000 passes, a fifth of everything it allocated (a query, a set, an async pass each).
 */
const COMMIT_PASS_SPACING_MS = 100;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Runs a nebula lighthouse for every cluster with provide_lighthouse, here, on this
 * control-plane server. Each pass compares what the database asks for with what runs: it makes
 * the cluster's key pair, gets its certificate signed (again when the CA, port, public host or
 * key changed, or a third of its lifetime is left), writes the nebula config, and (re)starts or
 * stops the process. A pass runs after each commit here, after each replicated batch (the
 * change generation moves), and on a slow timer; passes never overlap.
 */
export class LighthouseSupervisor {
  private readonly running = new Map<string, Running>();
  private readonly retryAt = new Map<string, number>();
  private readonly certs = new Map<string, CertInfo>();
  private generation = -1;
  private nextTimeCheck = 0;
  /** The wanted clusters the lighthouse directory was last pruned against. */
  private prunedFor: string | undefined;
  private busy: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private unhook: (() => void) | undefined;

  constructor(private readonly opts: LighthouseSupervisorOptions) {}

  start(): void {
    mkdirSync(this.opts.config.dir, { recursive: true, mode: 0o700 });
    this.killLeftovers();
    // One pass for any number of commits: a pass per commit (a query and a readdir each) was
    // 15% of a master's time at 10,000 commits/s.
    let passDue = false;
    let lastPassAt = Number.NEGATIVE_INFINITY;
    const run = (): void => {
      passDue = false;
      lastPassAt = performance.now();
      this.schedule();
    };
    this.unhook = this.opts.store.writer.onCommit(() => {
      if (passDue) return;
      passDue = true;
      const wait = lastPassAt + COMMIT_PASS_SPACING_MS - performance.now();
      if (wait <= 0) setImmediate(run);
      else setTimeout(run, wait).unref();
    });
    this.timer = setInterval(() => this.check(), this.opts.checkEveryMs ?? 1000);
    this.schedule();
  }

  get runningCount(): number {
    let n = 0;
    for (const r of this.running.values()) if (r.proc.status().state === 'running') n++;
    return n;
  }

  status(clusterId: string): LocalLighthouseStatus | null {
    const r = this.running.get(clusterId);
    return r ? { server_id: this.opts.serverId, config_sha256: r.sha256, ...r.proc.status() } : null;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.unhook?.();
    await this.busy;
    await Promise.all([...this.running.values()].map((r) => r.proc.stop()));
    this.running.clear();
  }

  private check(): void {
    if (this.opts.store.changes.current() !== this.generation || Date.now() >= this.nextTimeCheck) this.schedule();
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = (async () => {
      do {
        this.again = false;
        await this.pass().catch((err: unknown) => this.opts.log.error({ err: (err as Error).message }, 'lighthouse reconcile failed'));
      } while (this.again && !this.closed);
    })().finally(() => (this.busy = undefined));
  }

  private async pass(): Promise<void> {
    const { store, log } = this.opts;
    const generation = store.changes.current();
    let wanted: ClusterRow[];
    try {
      wanted = stmt(store.reader, 'SELECT id, ca_cert, lighthouse_port FROM clusters WHERE provide_lighthouse = 1 AND ca_cert IS NOT NULL ORDER BY id')
        .all() as ClusterRow[];
    } catch (err) {
      // A replica before its first snapshot has no tables yet.
      log.debug({ err: (err as Error).message }, 'lighthouses: database not readable yet');
      return;
    }
    this.generation = generation;
    const timeCheck = Date.now() >= this.nextTimeCheck;
    this.nextTimeCheck = Date.now() + TIME_CHECK_MS;
    const ids = new Set(wanted.map((c) => c.id));
    for (const [id, r] of this.running) {
      if (ids.has(id)) continue;
      await r.proc.stop();
      this.running.delete(id);
      log.info({ cluster_id: id }, 'lighthouse no longer wanted here: stopped');
    }
    // A readdir per pass was a tenth of a busy master's time; the set it prunes against
    // rarely changes. The time check prunes again now and then.
    const wantedKey = [...ids].join(',');
    if (wantedKey !== this.prunedFor || timeCheck) {
      this.removeUnwantedDirs(ids);
      this.prunedFor = wantedKey;
    }
    for (const c of wanted) {
      if (this.closed) return;
      await this.reconcile(c).catch((err: unknown) => {
        this.retryAt.set(c.id, Date.now() + RETRY_MS);
        this.nextTimeCheck = Math.min(this.nextTimeCheck, Date.now() + RETRY_MS);
        log.warn({ cluster_id: c.id, err: (err as Error).message }, 'lighthouse: cannot get it ready; will retry');
      });
    }
  }

  private async reconcile(c: ClusterRow): Promise<void> {
    const { store, config, serverId, log } = this.opts;
    const dir = path.join(config.dir, c.id);
    const publicKey = await ensureKeyPair(this.opts.tool, dir);
    const row = getRegistration(store, c.id, serverId);
    const stale = await this.staleReason(row, c, publicKey);
    if (stale) {
      if ((this.retryAt.get(c.id) ?? 0) > Date.now()) return;
      log.info({ cluster_id: c.id, reason: stale }, 'registering this server as a built-in lighthouse');
      // The row it writes comes back as a change (a commit here, or replication on a replica);
      // until then, or until the retry time, the same registration is not sent again.
      this.retryAt.set(c.id, Date.now() + RETRY_MS);
      this.nextTimeCheck = Math.min(this.nextTimeCheck, Date.now() + RETRY_MS);
      await this.opts.register({ cluster_id: c.id, server_id: serverId, public_key: publicKey, public_host: config.publicHost, port: c.lighthouse_port });
      return;
    }
    this.retryAt.delete(c.id);
    const blocklist = stmt(store.reader, 'SELECT fingerprint FROM revoked_certs WHERE cluster_id = ?').pluck().all(c.id) as string[];
    const rendered = renderLighthouseConfig(dir, { caCert: c.ca_cert, cert: row!.cert_pem, blocklist, listenHost: config.listenHost, port: row!.port });
    const current = this.running.get(c.id);
    if (current?.sha256 === rendered.sha256) return current.proc.start();
    await writeLighthouseConfig(dir, rendered);
    if (current) {
      current.sha256 = rendered.sha256;
      log.info({ cluster_id: c.id, config_sha256: rendered.sha256 }, 'lighthouse config changed: restarting');
      return current.proc.restart();
    }
    const proc = new SupervisedProcess(
      config.nebulaBin,
      ['-config', path.join(dir, FILES.config)],
      log.child({ cluster_id: c.id, component: 'lighthouse' }),
      { onStart: (pid) => writeFileSync(path.join(dir, PID_FILE), `${pid}\n`), onCrash: this.opts.onCrash },
      this.opts.backoff ?? DEFAULT_BACKOFF,
    );
    this.running.set(c.id, { proc, sha256: rendered.sha256 });
    proc.start();
  }

  /** Why this server's registration no longer fits, or undefined when it does. */
  private async staleReason(row: BuiltinRegistration | undefined, c: ClusterRow, publicKey: string): Promise<string | undefined> {
    if (!row) return 'not registered';
    if (row.port !== c.lighthouse_port) return 'port changed';
    if (row.public_host !== this.opts.config.publicHost) return 'public host changed';
    const [cert, ca] = await Promise.all([this.print(row.cert_pem), this.print(c.ca_cert)]);
    if (cert.issuer !== ca.fingerprint) return 'CA changed';
    if (cert.publicKey !== publicKeyHex(publicKey)) return 'key changed';
    const lifetime = Date.parse(cert.notAfter) - Date.parse(cert.notBefore);
    if (Date.parse(cert.notAfter) - Date.now() < lifetime / 3) return 'certificate nearing expiry';
    return undefined;
  }

  private async print(pem: string): Promise<CertInfo> {
    const cached = this.certs.get(pem);
    if (cached) return cached;
    const info = await this.opts.tool.print(pem);
    if (this.certs.size > 1000) this.certs.clear();
    this.certs.set(pem, info);
    return info;
  }

  /** A directory left by a cluster that was deleted or stopped providing lighthouses (its key is of no use now). */
  private removeUnwantedDirs(wanted: Set<string>): void {
    for (const name of readdirSync(this.opts.config.dir)) {
      if (UUID.test(name) && !wanted.has(name) && !this.running.has(name)) rmSync(path.join(this.opts.config.dir, name), { recursive: true, force: true });
    }
  }

  /** Lighthouses a killed server left running would hold their ports: end them before starting ours. */
  private killLeftovers(): void {
    for (const name of readdirSync(this.opts.config.dir)) {
      const dir = path.join(this.opts.config.dir, name);
      let pid: number;
      try {
        pid = Number(readFileSync(path.join(dir, PID_FILE), 'utf8').trim());
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        if (!cmdline.includes(path.join(dir, FILES.config))) continue;
      } catch {
        continue;
      }
      this.opts.log.warn({ pid, cluster_id: name }, 'ending a lighthouse left running by an earlier server process');
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
}
