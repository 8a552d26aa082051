import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';

export interface InternalClientOptions {
  baseUrl: string;
  secret: string;
  /** Client certificate for mutual TLS with the master. */
  tls?: { cert: string; key: string; ca: string | undefined } | undefined;
}

export interface JsonReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: unknown;
}

/**
 * Talks to another node's internal endpoints with the replication secret (and a client
 * certificate under mutual TLS). Plain node:http, because the stream and snapshot bodies are
 * consumed chunk by chunk and must be abortable.
 */
export class InternalClient {
  private readonly agent: http.Agent;
  private readonly tlsFiles: { cert: Buffer; key: Buffer; ca: Buffer | undefined } | undefined;

  constructor(private readonly opts: InternalClientOptions) {
    const isHttps = opts.baseUrl.startsWith('https:');
    this.tlsFiles = opts.tls
      ? { cert: readFileSync(opts.tls.cert), key: readFileSync(opts.tls.key), ca: opts.tls.ca ? readFileSync(opts.tls.ca) : undefined }
      : undefined;
    this.agent = isHttps ? new https.Agent({ keepAlive: true, ...(this.tlsFiles ?? {}) }) : new http.Agent({ keepAlive: true });
  }

  get baseUrl(): string {
    return this.opts.baseUrl;
  }

  /** Starts a request and resolves with the response head; the caller reads (or destroys) the body. */
  open(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<IncomingMessage> {
    const url = new URL(path, this.opts.baseUrl);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(
        url,
        {
          method,
          agent: this.agent,
          headers: {
            authorization: `Bearer ${this.opts.secret}`,
            ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
          },
          signal,
        },
        resolve,
      );
      req.on('error', reject);
      req.end(payload);
    });
  }

  async json(method: string, path: string, body?: unknown, timeoutMs = 5000): Promise<JsonReply> {
    const res = await this.open(method, path, body, AbortSignal.timeout(timeoutMs));
    return { status: res.statusCode ?? 0, headers: res.headers, body: await readBody(res) };
  }

  close(): void {
    this.agent.destroy();
  }
}

/** A response body parsed as JSON, or its text when it is not JSON (for error messages). */
async function readBody(res: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return text;
  }
}

/** An error answer's JSON body (`{error, code, details}`), or its text. */
export const errorBodyOf = readBody;

/** What an error answer says, for a log line: `: CODE message`, or its text. */
export async function errorOf(res: IncomingMessage): Promise<string> {
  return describeError(await readBody(res));
}

export function describeError(body: unknown): string {
  if (body && typeof body === 'object' && 'error' in body) return `: ${String((body as { code?: unknown }).code)} ${String(body.error)}`;
  return typeof body === 'string' && body ? `: ${body.slice(0, 200)}` : '';
}
