import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from './files.js';

/** One cluster's line in the status file; `nebulagc status` and monitoring read these fields. */
export interface ClusterStatus {
  name: string;
  server: string | null;
  degraded: boolean;
  enrolled: boolean;
  cert_expires_at: string | null;
  poll_mode: 'blocking' | 'plain';
  applied_version: number | null;
  applied_sha256: string | null;
  applied_at: string | null;
  server_version: number | null;
  last_poll_at: string | null;
  last_poll_result: string | null;
  rejected_sha256: string | null;
  nebula_pid: number | null;
  nebula_started_at: string | null;
  nebula_restarts: number;
  nebula_last_exit: string | null;
  last_error: string | null;
  last_error_at: string | null;
}

export interface StatusFile {
  daemon_pid: number;
  written_at: string;
  clusters: ClusterStatus[];
}

export function writeStatus(file: string, clusters: ClusterStatus[]): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const status: StatusFile = { daemon_pid: process.pid, written_at: new Date().toISOString(), clusters };
  writeFileAtomic(file, JSON.stringify(status, null, 2) + '\n', 0o644);
}

export function readStatus(file: string): StatusFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the status file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message} (is the daemon running?)`);
  }
  return JSON.parse(text) as StatusFile;
}

const ago = (iso: string | null, now: number): string => {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};

const uptime = (iso: string | null, now: number): string => (iso ? ago(iso, now).replace(' ago', '') : '-');

/** A fixed-width table, one row per cluster. */
export function formatStatus(status: StatusFile, now = Date.now()): string {
  const header = ['CLUSTER', 'STATE', 'SERVER', 'VERSION', 'SHA256', 'LAST POLL', 'RESULT', 'NEBULA PID', 'UPTIME', 'RESTARTS'];
  const rows = status.clusters.map((c) => [
    c.name,
    c.degraded ? 'DEGRADED' : c.applied_sha256 ? 'ok' : 'starting',
    c.server ?? '-',
    c.applied_version === null ? '-' : String(c.applied_version),
    c.applied_sha256 ? c.applied_sha256.slice(0, 12) : '-',
    ago(c.last_poll_at, now),
    c.last_poll_result ?? '-',
    c.nebula_pid === null ? '-' : String(c.nebula_pid),
    uptime(c.nebula_started_at, now),
    String(c.nebula_restarts),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd();
  const out = [line(header), ...rows.map(line)];
  for (const c of status.clusters) {
    if (c.last_error) out.push(`${c.name}: last error (${ago(c.last_error_at, now)}): ${c.last_error}`);
  }
  out.push(`daemon pid ${status.daemon_pid}, status written ${ago(status.written_at, now)}`);
  return out.join('\n') + '\n';
}
