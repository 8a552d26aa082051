import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type https from 'node:https';
import type { Duplex } from 'node:stream';

/** How long an answered connection may keep sending before it is cut off. */
const LINGER_MS = 2_000;

interface ClientError extends Error {
  code?: string;
  /** The chunk the parser was given when it failed (Node sets it on parser errors). */
  rawPacket?: Buffer;
}

/**
 * Whether the request line alone is past the header limit, which Node reports as a header
 * overflow (the URL counts towards max-http-header-size). Only knowable when the failing chunk
 * is the start of the request; otherwise the answer stays 431, which is not wrong either.
 */
function requestLineTooLong(err: ClientError, limit: number): boolean {
  const raw = err.rawPacket;
  if (!Buffer.isBuffer(raw) || !/^[A-Z]+ /.test(raw.subarray(0, 16).toString('latin1'))) return false;
  const eol = raw.indexOf('\n');
  return eol < 0 || eol >= limit;
}

function classify(err: ClientError, headerLimit: number): { status: number; code: string; message: string } {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return requestLineTooLong(err, headerLimit)
        ? { status: 414, code: 'URI_TOO_LONG', message: 'request URL is too long' }
        : { status: 431, code: 'HEADERS_TOO_LARGE', message: 'request headers are too large' };
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return { status: 413, code: 'PAYLOAD_TOO_LARGE', message: 'chunk extensions are too large' };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { status: 408, code: 'REQUEST_TIMEOUT', message: 'request was not received in time' };
    default:
      return { status: 400, code: 'BAD_REQUEST', message: 'malformed HTTP request' };
  }
}

/**
 * Answers requests that Node's HTTP parser rejects (oversized headers, a malformed request line)
 * with the API's JSON error shape. Those never reach Hono, so without this a client gets Node's
 * bare status line and no request id to quote.
 *
 * Installing a 'clientError' listener replaces Node's own answer entirely, so this keeps its
 * rules: say nothing once a response has started on the connection (it would corrupt the stream
 * the client is reading), and always close the connection.
 */
export function answerClientErrors(server: http.Server | https.Server): void {
  // The parser stays failed, and every further chunk of the same bad request reports again.
  const answered = new WeakSet<Duplex>();

  server.on('clientError', (err: ClientError, socket: Duplex) => {
    if (answered.has(socket)) return;
    answered.add(socket);
    const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
      socket.destroy();
      return;
    }
    // The server's own limit (serverOptions.maxHeaderSize) when set; @types/node does not declare it.
    const headerLimit = (server as { maxHeaderSize?: number }).maxHeaderSize ?? http.maxHeaderSize;
    const { status, code, message } = classify(err, headerLimit);
    const requestId = randomUUID();
    const body = JSON.stringify({ error: message, code, request_id: requestId });
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Error'}\r\n` +
        'Content-Type: application/json\r\n' +
        `Content-Length: ${Buffer.byteLength(body)}\r\n` +
        `X-Request-Id: ${requestId}\r\n` +
        'Connection: close\r\n' +
        '\r\n' +
        body,
    );
    // Not destroyed at once: closing with the rest of the client's request still unread makes
    // the kernel send a reset, which can throw away the answer before the client reads it. The
    // client closes once it has the answer; one that does not is cut off shortly after.
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
  });
}
