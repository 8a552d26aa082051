import { readFileSync } from 'node:fs';

function readPackageVersion(): string {
  // dist/server/src/version.js and server/src/version.ts both sit three levels below the root.
  const url = new URL('../../../package.json', import.meta.url);
  try {
    return (JSON.parse(readFileSync(url, 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0-unknown';
  }
}

export const VERSION = readPackageVersion();
