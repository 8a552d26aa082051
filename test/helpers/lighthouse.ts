import dgram from 'node:dgram';
import { readdirSync, readFileSync } from 'node:fs';

/** A UDP port nothing on 127.0.0.1 holds right now. */
export function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Whether a UDP socket is bound to an IPv4 host:port, from /proc/net: nebula binds an IPv6
 * socket, so the address shows there v4-mapped (::ffff:a.b.c.d).
 */
export function udpBound(host: string, port: number): boolean {
  const v4 = host.split('.').reverse().map((o) => Number(o).toString(16).padStart(2, '0')).join('').toUpperCase();
  const p = port.toString(16).padStart(4, '0').toUpperCase();
  const wanted = new Set([`${v4}:${p}`, `0000000000000000FFFF0000${v4}:${p}`]);
  return ['/proc/net/udp', '/proc/net/udp6'].some((file) =>
    readFileSync(file, 'utf8').split('\n').some((line) => wanted.has(line.trim().split(/\s+/)[1] ?? '')),
  );
}

export function alive(pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** Pids of live processes whose command line mentions `needle` (a test's temp dir). */
export function processesMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle) && alive(Number(name))) pids.push(Number(name));
    } catch {
      // It ended meanwhile.
    }
  }
  return pids;
}

/** The safety net after a failed test: nothing it started may outlive it. */
export function killMentioning(needle: string): void {
  for (const pid of processesMentioning(needle)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
}
