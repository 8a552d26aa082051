// The yardstick for the poll benchmark: the server's own framework and adapter with nothing
// else, so the ratio against it is the cost of NebulaGC's middleware, auth and SQLite reads.
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { isEntryPoint } from './entry.js';

if (isEntryPoint(import.meta.url)) {
  const app = new Hono();
  app.get('/', (c) => c.text('ok'));
  serve({ fetch: app.fetch, hostname: '127.0.0.1', port: Number(process.argv[2]) });
}
