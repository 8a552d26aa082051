// Replication applies page images through SQLite's sqlite_dbpage virtual table, which the
// stock better-sqlite3 build leaves out. This install step checks for it and, only when it
// is missing, rebuilds the addon with SQLITE_ENABLE_DBPAGE_VTAB (about 70 s here).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const probe = `
  const Database = require('better-sqlite3');
  const db = new Database(':memory:');
  try { db.prepare('SELECT 1 FROM sqlite_dbpage LIMIT 0').all(); }
  catch (e) { console.error(e.message); process.exit(1); }
`;

function hasDbpage() {
  const r = spawnSync(process.execPath, ['-e', probe], { cwd: process.cwd(), encoding: 'utf8' });
  return { ok: r.status === 0, detail: (r.stderr || '').trim().split('\n')[0] };
}

function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((p) => p && existsSync(p));
}

const before = hasDbpage();
if (before.ok) {
  console.log('[ensure-sqlite-dbpage] better-sqlite3 already has sqlite_dbpage');
  process.exit(0);
}

let pkgDir;
try {
  pkgDir = path.dirname(require.resolve('better-sqlite3/package.json'));
} catch {
  console.error('[ensure-sqlite-dbpage] better-sqlite3 is not installed; run npm ci first');
  process.exit(1);
}
const nodeGyp = findNodeGyp();
if (!nodeGyp) {
  console.error('[ensure-sqlite-dbpage] cannot find node-gyp (npm ships it under its node_modules); install it or rebuild better-sqlite3 by hand with CFLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB');
  process.exit(1);
}

console.log(`[ensure-sqlite-dbpage] sqlite_dbpage missing (${before.detail}); rebuilding better-sqlite3 with SQLITE_ENABLE_DBPAGE_VTAB`);
const args = [nodeGyp, 'rebuild', '--release'];
// npm passes its nodedir setting through the environment; node-gyp run by hand without it
// tries to download Node's headers, which these machines cannot reach.
if (process.env.npm_config_nodedir) args.push(`--nodedir=${process.env.npm_config_nodedir}`);
else if (existsSync('/usr/include/node/node.h')) args.push('--nodedir=/usr');
const started = Date.now();
const build = spawnSync(process.execPath, args, {
  cwd: pkgDir,
  stdio: 'inherit',
  env: { ...process.env, CFLAGS: `${process.env.CFLAGS ?? ''} -DSQLITE_ENABLE_DBPAGE_VTAB`.trim() },
});
if (build.status !== 0) {
  console.error('[ensure-sqlite-dbpage] node-gyp rebuild failed; replication cannot work without sqlite_dbpage');
  process.exit(1);
}
const after = hasDbpage();
if (!after.ok) {
  console.error(`[ensure-sqlite-dbpage] rebuilt, but sqlite_dbpage is still missing: ${after.detail}`);
  process.exit(1);
}
console.log(`[ensure-sqlite-dbpage] rebuilt with sqlite_dbpage in ${Math.round((Date.now() - started) / 1000)} s`);
