import { gunzipSync, gzipSync } from 'node:zlib';
import tar from 'tar-stream';

export interface Entry {
  name: string;
  content?: string | Buffer;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  linkname?: string;
}

export const CA_PEM = '-----BEGIN NEBULA CERTIFICATE-----\nAAAA\n-----END NEBULA CERTIFICATE-----\n';
export const CONFIG_YML = 'pki:\n  ca: /etc/nebula/ca.crt\nlighthouse:\n  am_lighthouse: false\n';

/** Builds a tar.gz in memory; entries may be hostile on purpose. */
export async function makeTarGz(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    if (type === 'file') {
      const content = Buffer.isBuffer(e.content) ? e.content : Buffer.from(e.content ?? '');
      pack.entry({ name: e.name, type, size: content.length }, content);
    } else {
      pack.entry({ name: e.name, type, linkname: e.linkname });
    }
  }
  pack.finalize();
  await done;
  return gzipSync(Buffer.concat(chunks));
}

export const validBundle = (extra: Entry[] = [], config = CONFIG_YML): Promise<Buffer> =>
  makeTarGz([{ name: 'config.yml', content: config }, { name: 'ca.crt', content: CA_PEM }, ...extra]);

export interface TarEntry {
  header: tar.Header;
  content: Buffer;
}

/** Every entry of a tar.gz, headers included, in archive order. */
export async function tarEntries(data: Buffer): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    const parts: Buffer[] = [];
    stream.on('data', (c: unknown) => parts.push(c as Buffer));
    stream.on('end', () => {
      out.push({ header, content: Buffer.concat(parts) });
      next();
    });
  });
  const done = new Promise<void>((resolve, reject) => {
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  extract.end(gunzipSync(data));
  await done;
  return out;
}

/** The regular files of a tar.gz, by name. */
export async function untarGz(data: Buffer): Promise<Map<string, Buffer>> {
  const entries = await tarEntries(data);
  return new Map(entries.filter((e) => e.header.type === 'file').map((e) => [e.header.name, e.content]));
}
