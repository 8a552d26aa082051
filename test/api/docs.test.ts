import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { envSchema } from '../../server/src/config.js';
import { call, startTestServer, type TestServer } from '../helpers/server.js';

const root = new URL('../../../', import.meta.url);
const read = (p: string): string => readFileSync(new URL(p, root), 'utf8');

/** The docs are part of the interface: a documented route or setting that does not exist is a defect. */
describe('docs agree with the code', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.stop());

  it('docs/API.md lists exactly the routes the server serves', async () => {
    const spec = (await call(s.url, 'GET', '/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
    const served = new Set<string>(['GET /metrics', 'GET /openapi.json']);
    for (const [p, ops] of Object.entries(spec.paths)) for (const m of Object.keys(ops)) served.add(`${m.toUpperCase()} ${p}`);
    const documented = new Set([...read('docs/API.md').matchAll(/`(GET|POST|PUT|PATCH|DELETE) (\/[^`\s]*)`/g)].map((m) => `${m[1]} ${m[2]}`));
    assert.deepEqual([...documented].filter((r) => !served.has(r)), [], 'documented but not served');
    assert.deepEqual([...served].filter((r) => !documented.has(r)), [], 'served but not documented');
  });

  it('the README configuration table lists exactly the settings config.ts reads', () => {
    const readme = read('README.md');
    const documented = new Set([...readme.matchAll(/^\| `(NEBULAGC_[A-Z0-9_]+)`/gm)].map((m) => m[1]));
    const read_ = new Set(Object.keys(envSchema.shape));
    assert.deepEqual([...documented].filter((v) => !read_.has(v!)), [], 'documented but not read');
    assert.deepEqual([...read_].filter((v) => !documented.has(v)), [], 'read but not documented');
  });
});
