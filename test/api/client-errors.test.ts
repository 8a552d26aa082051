import assert from 'node:assert/strict';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { serve } from '@hono/node-server';
import { answerClientErrors } from '../../server/src/http/client-errors.js';

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Sends raw bytes and reads until the server closes the connection (bounded). */
function rawRequest(port: number, data: string, ms = 5_000): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no complete answer in time'));
    }, ms);
    const finish = (): void => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      const split = text.indexOf('\r\n\r\n');
      if (split < 0) return reject(new Error(`no HTTP response in ${JSON.stringify(text.slice(0, 200))}`));
      const [statusLine, ...lines] = text.slice(0, split).split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body: text.slice(split + 4) });
    };
    socket.on('data', (d: Buffer) => chunks.push(d));
    // A reset after the answer has been read is fine; the answer is what is checked.
    socket.on('error', () => {});
    socket.on('close', finish);
    socket.write(data);
  });
}

function assertJsonError(r: RawAnswer, status: number, code: string): void {
  assert.equal(r.status, status);
  assert.equal(r.headers['content-type'], 'application/json');
  assert.equal(r.headers.connection, 'close');
  assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.body));
  const body = JSON.parse(r.body) as Record<string, unknown>;
  assert.deepEqual(Object.keys(body).sort(), ['code', 'error', 'request_id']);
  assert.equal(body.code, code);
  assert.equal(typeof body.error, 'string');
  assert.match(body.request_id as string, /^[0-9a-f-]{36}$/);
  assert.equal(r.headers['x-request-id'], body.request_id);
}

describe('requests the HTTP parser rejects get JSON errors', () => {
  let server: Server;
  let port: number;

  before(async () => {
    await new Promise<void>((resolve) => {
      server = serve({ fetch: () => new Response('ok'), port: 0, hostname: '127.0.0.1' }, () => resolve()) as Server;
    });
    answerClientErrors(server);
    port = (server.address() as AddressInfo).port;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('a 100 KB header is 431 HEADERS_TOO_LARGE', async () => {
    const r = await rawRequest(port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(100_000)}\r\n\r\n`);
    assertJsonError(r, 431, 'HEADERS_TOO_LARGE');
  });

  it('a URL past the header limit is 414 URI_TOO_LONG', async () => {
    const r = await rawRequest(port, `GET /${'a'.repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`);
    assertJsonError(r, 414, 'URI_TOO_LONG');
  });

  it('a garbage request line is 400 BAD_REQUEST', async () => {
    const r = await rawRequest(port, 'this is not http\r\n\r\n');
    assertJsonError(r, 400, 'BAD_REQUEST');
  });

  it('well-formed requests still reach the app', async () => {
    const res = await fetch(`http://127.0.0.1:${port}/`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), 'ok');
  });
});
