import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { Hono } from 'hono';
import { Writer } from '../../server/src/db/writer.js';
import type { AppEnv } from '../../server/src/http/context.js';
import { Metrics } from '../../server/src/http/metrics.js';
import { observe } from '../../server/src/http/middleware/observe.js';
import { createLogger } from '../../server/src/log.js';

describe('request log levels', () => {
  const db = new Database(':memory:');
  after(() => db.close());

  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const log = createLogger('debug', sink);
  const app = new Hono<AppEnv>();
  app.use('*', observe(new Metrics({ dbPath: ':memory:', writer: new Writer(db) }), log));
  const unavailable = (c: { json: (body: unknown, status: 503) => Response }): Response => c.json({ code: 'NOT_MASTER' }, 503);
  app.get('/health', unavailable);
  app.get('/health/master', unavailable);
  app.get('/healthz', unavailable);
  app.get('/api/x', unavailable);
  app.get('/health/boom', () => new Response('boom', { status: 500 }));

  /** The level the one request line for `path` was logged at. */
  const levelOf = async (path: string, status: number): Promise<unknown> => {
    lines.length = 0;
    const res = await app.request(path);
    assert.equal(res.status, status);
    // pino writes to a plain stream synchronously; give the stream's callback a turn anyway.
    await new Promise((resolve) => setImmediate(resolve));
    const requests = lines.filter((l) => l.msg === 'request');
    assert.equal(requests.length, 1, JSON.stringify(lines));
    assert.equal(requests[0]!.path, path);
    assert.equal(requests[0]!.status, status);
    return requests[0]!.level;
  };

  it('a 503 from a health probe is logged at debug', async () => {
    assert.equal(await levelOf('/health/master', 503), 'debug');
    assert.equal(await levelOf('/health', 503), 'debug');
  });

  it('other 5xx answers are still errors', async () => {
    assert.equal(await levelOf('/api/x', 503), 'error');
    assert.equal(await levelOf('/healthz', 503), 'error');
    assert.equal(await levelOf('/health/boom', 500), 'error');
  });
});
