import { rmSync } from 'node:fs';
import path from 'node:path';
import { Backoff, jitter, sleep } from './backoff.js';
import type { ClusterConfig, DaemonConfig } from './config.js';
import { EnrollRetry, enroll, keyPath, prepareStateDir, readEnrollment, renewalDue, type Enrollment } from './enrollment.js';
import type { Logger } from './log.js';
import {
  BundleRejected,
  activate,
  activeRelease,
  announcedSha,
  currentConfigPath,
  prepareConfigDir,
  pruneReleases,
  stageRelease,
  testConfig,
  verifyBundle,
} from './release.js';
import { AllServersDown, BodyTooLarge, ServerPool, describeFailure, errorCodeOf, jsonOf, type Reply } from './server-pool.js';
import type { ClusterStatus } from './status.js';
import { Supervisor } from './supervisor.js';

/** A blocking poll that comes back this fast with nothing new is treated as misbehaving, and paced. */
const MIN_BLOCKING_CYCLE_MS = 1000;
const INDEX_HEADER = 'x-nebulagc-index';

interface VersionReply {
  version?: number;
  config_version?: number;
}

/** The certificate is gone on the server's side: enroll again before the next poll. */
class NotEnrolled extends Error {}

/**
 * Keeps one cluster's nebula up to date: enrollment and renewal, route advertisement, the poll
 * loop with heartbeats, and applying new bundles. Errors never stop the loop; with every server
 * down it keeps the last good config running and says so in the status (degraded mode).
 */
export class ClusterAgent {
  readonly status: ClusterStatus;
  private readonly pool: ServerPool;
  private readonly supervisor: Supervisor;
  private readonly errorBackoff: Backoff;
  private enrollment: Enrollment | null = null;
  private seenVersion: number | null = null;
  private serverBlocks = true;
  private routesSynced = false;
  private lastHeartbeat = 0;
  private readonly rejected = new Set<string>();
  private previousRelease: string | null = null;
  private readonly renewBackoff: Backoff;
  private nextRenewalAt = 0;

  constructor(
    private readonly cluster: ClusterConfig,
    private readonly config: DaemonConfig,
    private readonly log: Logger,
    private readonly shutdown: AbortSignal,
    private readonly onStatus: () => void,
  ) {
    this.pool = new ServerPool(cluster.servers, cluster.nodeToken, { timeoutMs: config.poll.requestTimeoutMs, backoff: config.serverBackoff }, log, shutdown);
    this.supervisor = new Supervisor({
      command: cluster.nebulaBin,
      configFile: currentConfigPath(cluster.configDir),
      pidFile: path.join(cluster.configDir, 'nebula.pid'),
      backoff: config.restartBackoff,
      log,
      onChange: () => this.publish(),
    });
    this.errorBackoff = new Backoff(config.serverBackoff.initialMs, config.serverBackoff.maxMs);
    this.renewBackoff = new Backoff(config.serverBackoff.initialMs, config.serverBackoff.maxMs);
    this.status = {
      name: cluster.name,
      server: null,
      degraded: false,
      enrolled: false,
      cert_expires_at: null,
      poll_mode: config.poll.mode,
      applied_version: null,
      applied_sha256: null,
      applied_at: null,
      server_version: null,
      last_poll_at: null,
      last_poll_result: null,
      rejected_sha256: null,
      nebula_pid: null,
      nebula_started_at: null,
      nebula_restarts: 0,
      nebula_last_exit: null,
      last_error: null,
      last_error_at: null,
    };
  }

  async run(): Promise<void> {
    prepareStateDir(this.cluster);
    prepareConfigDir(this.cluster.configDir);
    this.enrollment = readEnrollment(this.cluster);
    await this.supervisor.stopLeftover();
    // The last applied config starts at once, before any server is asked: the overlay comes up
    // even when the whole control plane is down.
    const active = activeRelease(this.cluster.configDir);
    if (active) {
      this.status.applied_sha256 = active;
      this.supervisor.start();
    }
    this.publish();

    while (!this.shutdown.aborted) {
      try {
        await this.cycle();
        this.errorBackoff.reset();
        if (this.status.degraded) this.log.info('control plane reachable again; leaving degraded mode');
        this.status.degraded = false;
      } catch (err) {
        if (this.shutdown.aborted) break;
        await this.failed(err);
      }
      this.publish();
    }
    await this.supervisor.stop();
    this.publish();
  }

  private async failed(err: unknown): Promise<void> {
    if (err instanceof AllServersDown) {
      if (!this.status.degraded) this.log.warn({ err: err.lastError }, 'no control-plane server reachable; degraded mode, the current config keeps running');
      this.status.degraded = true;
      this.status.server = null;
      this.status.last_poll_result = 'unreachable';
      this.recordError(err.message);
      this.publish();
      await sleep(Math.max(100, err.retryAt - Date.now()), this.shutdown);
      return;
    }
    const message = (err as Error).message;
    this.status.server = this.pool.current;
    this.recordError(message);
    if (err instanceof NotEnrolled) {
      this.log.warn({ err: message }, 'enrolling again');
      return;
    }
    const delay = this.errorBackoff.fail();
    this.log.error({ err: message, retry_in_ms: Math.round(delay) }, err instanceof EnrollRetry ? 'enrollment must be retried' : 'poll cycle failed');
    this.publish();
    await sleep(delay, this.shutdown);
  }

  private async cycle(): Promise<void> {
    if (!this.enrollment) {
      this.enrollment = await enroll(this.cluster, this.pool);
      this.log.info({ fingerprint: this.enrollment.fingerprint, expires_at: this.enrollment.expires_at }, 'enrolled');
    } else if (renewalDue(this.enrollment) && Date.now() >= this.nextRenewalAt) {
      await this.renew();
    }
    this.status.enrolled = true;
    this.status.cert_expires_at = this.enrollment.expires_at;
    if (!this.routesSynced) await this.syncRoutes();
    await this.heartbeat();

    const started = Date.now();
    const { version, blocking } = await this.pollVersion();
    this.status.server = this.pool.current;
    this.status.server_version = version;
    this.status.poll_mode = blocking ? 'blocking' : 'plain';
    this.status.last_poll_at = new Date().toISOString();
    const changed = version !== this.seenVersion || this.status.applied_sha256 === null;
    this.status.last_poll_result = changed ? 'changed' : 'unchanged';
    if (changed) await this.fetchAndApply(version);
    this.seenVersion = version;
    this.publish();

    if (!blocking) await sleep(jitter(this.config.poll.intervalMs), this.shutdown);
    else if (!changed && Date.now() - started < MIN_BLOCKING_CYCLE_MS) await sleep(MIN_BLOCKING_CYCLE_MS, this.shutdown);
  }

  private async pollVersion(): Promise<{ version: number; blocking: boolean }> {
    const wantBlocking = this.config.poll.mode === 'blocking' && this.seenVersion !== null && this.serverBlocks;
    const query = wantBlocking ? `?index=${this.seenVersion}&wait=${Math.round(this.config.poll.waitMs / 1000)}s` : '';
    const reply = await this.pool.request('GET', `/api/v1/config/version${query}`, {
      timeoutMs: this.config.poll.requestTimeoutMs + (wantBlocking ? this.config.poll.waitMs : 0),
    });
    const body = jsonOf<VersionReply>(reply, 'config version');
    const version = body.version ?? body.config_version;
    if (typeof version !== 'number') throw new Error('config version: the reply has neither version nor config_version');
    // A server without blocking polls answers without the index header, and the daemon falls back
    // to plain polls. Every answer is checked, so a server upgraded (or failed over to) that has
    // them is used that way from its first answer on.
    this.serverBlocks = reply.headers.get(INDEX_HEADER) !== null;
    return { version, blocking: this.config.poll.mode === 'blocking' && this.serverBlocks };
  }

  /**
   * A failed renewal does not stop polling: the current certificate is still valid for a third
   * of its lifetime, so the renewal is retried with backoff while the config keeps flowing.
   */
  private async renew(): Promise<void> {
    try {
      this.enrollment = await enroll(this.cluster, this.pool);
      this.renewBackoff.reset();
      this.nextRenewalAt = 0;
      this.log.info({ fingerprint: this.enrollment.fingerprint, expires_at: this.enrollment.expires_at }, 'certificate renewed');
    } catch (err) {
      if (err instanceof AllServersDown) throw err;
      const delay = this.renewBackoff.fail();
      this.nextRenewalAt = Date.now() + delay;
      this.recordError(`renewal failed: ${(err as Error).message}`);
      this.log.error({ err: (err as Error).message, retry_in_ms: Math.round(delay) }, 'certificate renewal failed');
    }
  }

  private async heartbeat(): Promise<void> {
    if (Date.now() - this.lastHeartbeat < this.config.poll.heartbeatIntervalMs) return;
    const reply = await this.pool.request('POST', '/api/v1/heartbeat');
    if (reply.status !== 202 && reply.status !== 200) this.log.warn({ reply: describeFailure(reply) }, 'heartbeat refused');
    this.lastHeartbeat = Date.now();
  }

  /** Advertises the configured routes when the server's list differs (order does not matter). */
  private async syncRoutes(): Promise<void> {
    const wanted = this.cluster.routes;
    if (wanted === undefined) {
      this.routesSynced = true;
      return;
    }
    const current = jsonOf<{ routes: string[] }>(await this.pool.request('GET', '/api/v1/routes'), 'routes');
    const same = (a: string[], b: string[]): boolean => a.length === b.length && [...a].sort().every((r, i) => r === [...b].sort()[i]);
    if (!same(current.routes, wanted)) {
      const reply = await this.pool.request('PUT', '/api/v1/routes', { json: { routes: wanted } });
      if (reply.status === 200) {
        this.log.info({ routes: wanted }, 'routes advertised');
      } else {
        // A refused list stays refused until daemon.yml changes, which takes a restart; polling must go on.
        this.recordError(`advertising routes: ${describeFailure(reply)}`);
        this.log.error({ routes: wanted, reply: describeFailure(reply) }, 'routes refused by the server');
      }
    }
    this.routesSynced = true;
  }

  private async fetchAndApply(version: number): Promise<void> {
    const active = activeRelease(this.cluster.configDir);
    const headers: Record<string, string> = active ? { 'if-none-match': `"${active}"` } : {};
    let reply: Reply;
    try {
      reply = await this.pool.request('GET', '/api/v1/config/bundle', { headers, maxBodyBytes: this.config.maxBundleBytes });
    } catch (err) {
      if (!(err instanceof BodyTooLarge)) throw err;
      const sha = announcedSha(err.headers);
      if (sha === null) throw err;
      this.reject(new BundleRejected(sha, `bundle too large: ${err.message}`), version);
      return;
    }
    if (reply.status === 304) {
      this.status.applied_version = version;
      return;
    }
    if (reply.status === 409 && errorCodeOf(reply) === 'NOT_ENROLLED') {
      this.enrollment = null;
      rmSync(path.join(this.cluster.stateDir, 'enrollment.json'), { force: true });
      throw new NotEnrolled('the server has no certificate for this node');
    }
    if (reply.status !== 200) throw new Error(`bundle download: ${describeFailure(reply)}`);

    const announced = announcedSha(reply.headers);
    if (announced && this.rejected.has(announced)) return;
    const bundleVersion = Number(reply.headers.get('x-nebulagc-bundle-version') ?? version);
    try {
      const { sha256, files } = await verifyBundle(reply.body, announced, this.config.maxBundleBytes);
      if (sha256 === active) {
        this.status.applied_version = bundleVersion;
        return;
      }
      const dir = stageRelease(this.cluster.configDir, sha256, files, keyPath(this.cluster));
      await testConfig(this.cluster.nebulaBin, path.join(dir, 'config.yml'), sha256);
      activate(this.cluster.configDir, sha256);
      this.previousRelease = active;
      this.status.applied_sha256 = sha256;
      this.status.applied_version = bundleVersion;
      this.status.applied_at = new Date().toISOString();
      this.status.last_error = null;
      this.log.info({ version: bundleVersion, sha256 }, 'new config applied; restarting nebula');
      await this.supervisor.restart();
    } catch (err) {
      if (!(err instanceof BundleRejected) || !err.permanent) throw err;
      this.reject(err, bundleVersion);
    } finally {
      pruneReleases(this.cluster.configDir, [activeRelease(this.cluster.configDir), this.previousRelease]);
    }
  }

  private reject(err: BundleRejected, version: number): void {
    this.rejected.add(err.sha256);
    this.status.rejected_sha256 = err.sha256;
    this.status.last_poll_result = 'rejected';
    this.recordError(err.message);
    this.log.error({ version, sha256: err.sha256, err: err.message }, 'bundle rejected; the current config keeps running');
  }

  private recordError(message: string): void {
    this.status.last_error = message;
    this.status.last_error_at = new Date().toISOString();
  }

  private publish(): void {
    this.status.nebula_pid = this.supervisor.pid;
    const started = this.supervisor.startedAtMs;
    this.status.nebula_started_at = started === null ? null : new Date(started).toISOString();
    this.status.nebula_restarts = this.supervisor.restarts;
    this.status.nebula_last_exit = this.supervisor.lastExit;
    this.onStatus();
  }
}
