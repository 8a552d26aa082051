import { readFileSync } from 'node:fs';
import { Option } from 'commander';
import { loadConfig } from '../config.js';

/** Flags of the commands that call a running server's API. */
export interface ServerFlags {
  url?: string;
  tokenFile?: string;
}

export const serverOptions = (): Option[] => [
  new Option('--url <url>', 'the server’s API URL (default: from NEBULAGC_LISTEN)'),
  new Option('--token-file <file>', 'file holding the operator token (default: env NEBULAGC_OPERATOR_TOKEN)'),
];

/** Calls a running server with the operator token; throws with its JSON error on a non-2xx answer. */
export async function callServer(flags: ServerFlags, method: string, path: string, body?: unknown): Promise<unknown> {
  const config = loadConfig(process.env);
  const token = flags.tokenFile ? readFileSync(flags.tokenFile, 'utf8').trim() : config.operatorToken;
  if (!token) throw new Error('an operator token is needed: set NEBULAGC_OPERATOR_TOKEN or pass --token-file');
  const host = ['0.0.0.0', '::'].includes(config.listen.host) ? '127.0.0.1' : config.listen.host;
  const url = (flags.url ?? `${config.tls ? 'https' : 'http'}://${host}:${config.listen.port}`).replace(/\/+$/, '');
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON (a proxy's error page): shown as text.
  }
  if (!res.ok) throw new Error(`${url}${path} answered ${res.status}: ${typeof parsed === 'string' ? parsed : JSON.stringify(parsed)}`);
  return parsed;
}
