import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

/**
 * True when node was started on this module (by hand or by `npm run bench`). `npm test` runs
 * `node --test dist/test/`, and given a directory Node 20 runs every .js file below a `test`
 * folder, these benchmarks included; the runner marks such runs with NODE_TEST_CONTEXT, and
 * there a benchmark must not start servers and a minute of load. Kept free of heavy imports so
 * the baseline server (bare-hono) can use it too.
 */
export const isEntryPoint = (moduleUrl: string): boolean =>
  process.env.NODE_TEST_CONTEXT === undefined &&
  process.argv[1] !== undefined &&
  moduleUrl === pathToFileURL(realpathSync(process.argv[1])).href;
