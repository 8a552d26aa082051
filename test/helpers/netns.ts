import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/**
 * An underlay network of its own for end-to-end tests: one network namespace per host, each
 * joined by a veth pair to a bridge that lives in a namespace of its own, with link-local
 * addresses. Nothing touches the root namespace's interfaces, and every name carries this
 * process's pid so parallel or crashed runs never collide.
 *
 * Tests send traffic only to these namespaces' own addresses.
 */
export class Underlay {
  private readonly bridgeNs: string;
  private readonly hosts = new Map<string, { ns: string; ip: string }>();
  private destroyed = false;
  private readonly onExit = (): void => this.destroy();

  private constructor(private readonly tag: string) {
    this.bridgeNs = `ngc${tag}br`;
  }

  /** Whether this machine can run it: root, `ip netns`, and a tun device for nebula. */
  static available(): { ok: true } | { ok: false; reason: string } {
    if (process.getuid?.() !== 0) return { ok: false, reason: 'needs root for network namespaces' };
    if (!existsSync('/dev/net/tun')) return { ok: false, reason: '/dev/net/tun is missing' };
    const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    if (r.status !== 0) return { ok: false, reason: `ip netns does not work: ${r.stderr || r.error?.message}` };
    return { ok: true };
  }

  /** Hosts get 169.254.77.1, .2, … in the order given. */
  static create(hostNames: string[]): Underlay {
    removeStale();
    const u = new Underlay(String(process.pid));
    process.once('exit', u.onExit);
    try {
      ip(['netns', 'add', u.bridgeNs]);
      ip(['-n', u.bridgeNs, 'link', 'add', 'br0', 'type', 'bridge']);
      ip(['-n', u.bridgeNs, 'link', 'set', 'br0', 'up']);
      hostNames.forEach((name, i) => {
        const ns = `ngc${u.tag}h${i}`;
        const hostEnd = `ngh${u.tag}${i}`.slice(0, 15);
        const bridgeEnd = `ngb${u.tag}${i}`.slice(0, 15);
        const addr = `169.254.77.${i + 1}`;
        ip(['netns', 'add', ns]);
        u.hosts.set(name, { ns, ip: addr });
        ip(['link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', bridgeEnd]);
        ip(['link', 'set', hostEnd, 'netns', ns]);
        ip(['link', 'set', bridgeEnd, 'netns', u.bridgeNs]);
        ip(['-n', u.bridgeNs, 'link', 'set', bridgeEnd, 'master', 'br0']);
        ip(['-n', u.bridgeNs, 'link', 'set', bridgeEnd, 'up']);
        ip(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', hostEnd]);
        ip(['-n', ns, 'link', 'set', hostEnd, 'up']);
        ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      });
    } catch (err) {
      u.destroy();
      throw err;
    }
    return u;
  }

  namespace(host: string): string {
    return this.host(host).ns;
  }

  /** The host's underlay address. */
  address(host: string): string {
    return this.host(host).ip;
  }

  /** A command prefix that runs a program inside the host's namespace (a `nebula_bin` wrapper). */
  wrap(host: string, program: string): string[] {
    return ['ip', 'netns', 'exec', this.namespace(host), program];
  }

  /** Runs a command in the host's namespace and returns its exit status and output. */
  exec(host: string, argv: string[], timeoutMs = 10_000): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync('ip', ['netns', 'exec', this.namespace(host), ...argv], { encoding: 'utf8', timeout: timeoutMs });
    return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  /** One ping from `from` to an address, with a short deadline; true when it was answered. */
  ping(from: string, to: string, deadlineS = 2): boolean {
    return this.exec(from, ['ping', '-c', '1', '-W', String(deadlineS), '-w', String(deadlineS), to], (deadlineS + 2) * 1000).status === 0;
  }

  /** Kills whatever still runs in the namespaces, then deletes them (their veths go with them). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    process.removeListener('exit', this.onExit);
    for (const { ns } of this.hosts.values()) deleteNamespace(ns);
    deleteNamespace(this.bridgeNs);
  }

  private host(name: string): { ns: string; ip: string } {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no host "${name}" in this underlay`);
    return h;
  }
}

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function deleteNamespace(ns: string): void {
  const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
  for (const pid of pids.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  spawnSync('ip', ['netns', 'del', ns]);
}

/** Namespaces left by a run that was killed before it could clean up. */
function removeStale(): void {
  const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '';
  for (const line of list.split('\n')) {
    const m = /^(ngc(\d+)(?:br|h\d+))\b/.exec(line);
    if (!m) continue;
    const owner = Number(m[2]);
    if (owner === process.pid || isAlive(owner)) continue;
    deleteNamespace(m[1]!);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
