// Compiles the TypeScript only when a source is newer than the last build, so `npm start`
// stays quick after `npm ci` (which builds once) and still picks up edits.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const stamp = path.join(root, 'dist', '.build-stamp');
const inputs = ['server/src', 'daemon/src', 'test', 'tsconfig.json', 'package.json'];

function newest(p) {
  if (!existsSync(p)) return 0;
  const st = statSync(p);
  if (!st.isDirectory()) return st.mtimeMs;
  return readdirSync(p).reduce((m, name) => Math.max(m, newest(path.join(p, name))), st.mtimeMs);
}

const built = existsSync(stamp) ? statSync(stamp).mtimeMs : 0;
const latest = Math.max(...inputs.map((p) => newest(path.join(root, p))));
if (built >= latest) process.exit(0);

let tsc;
try {
  tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
} catch {
  if (existsSync(path.join(root, 'dist', 'server'))) {
    console.error('[build] typescript is not installed (npm ci --omit=dev?); using the existing dist/');
    process.exit(0);
  }
  console.error('[build] typescript is not installed and there is no dist/: run npm ci');
  process.exit(1);
}
// A clean build, so a deleted or renamed source (a test above all) leaves nothing behind in dist/.
rmSync(path.join(root, 'dist'), { recursive: true, force: true });
const r = spawnSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.json')], { stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
writeFileSync(stamp, new Date().toISOString());
