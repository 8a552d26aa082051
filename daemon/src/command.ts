import { spawn } from 'node:child_process';

export interface CommandResult {
  code: number | null;
  output: string;
}

const MAX_OUTPUT = 64 * 1024;

/**
 * Runs `command` (a binary, or a wrapper and its arguments) with `args` appended, and collects
 * stdout and stderr together, capped, for error messages. It runs in a process group of its own
 * that is killed once it exits: whatever a wrapper left behind would otherwise hold the output
 * pipes open, and the command would never be seen to finish.
 */
export function runCommand(command: string[], args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command[0]!, [...command.slice(1), ...args], {
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const killGroup = (): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Nothing is left in the group.
      }
    };
    const timer = setTimeout(killGroup, opts.timeoutMs ?? 30_000);
    let output = '';
    const collect = (chunk: Buffer): void => {
      if (output.length < MAX_OUTPUT) output += chunk.toString('utf8');
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${command.join(' ')}: ${err.message}`));
    });
    child.once('exit', killGroup);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

/** The last meaningful line of a tool's output: nebula and nebula-cert put the reason there. */
export function lastLine(output: string): string {
  const lines = output.trim().split('\n').filter(Boolean);
  const errorLine = [...lines].reverse().find((l) => /level=(error|fatal)/.test(l));
  const line = errorLine ?? lines[lines.length - 1] ?? '';
  const msg = /msg="((?:[^"\\]|\\.)*)"/.exec(line);
  const err = /error="((?:[^"\\]|\\.)*)"/.exec(line);
  if (msg) return err ? `${msg[1]}: ${err[1]}` : msg[1]!;
  return line.slice(0, 500);
}
