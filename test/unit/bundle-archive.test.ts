import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import {
  defaultBundleLimits,
  inspectBundle,
  normaliseEntryName,
  readLimited,
  type BundleLimits,
} from '../../server/src/domain/bundle-archive.js';
import { DomainError, type ErrorCode } from '../../server/src/domain/errors.js';
import { CA_PEM, CONFIG_YML, makeTarGz, validBundle } from '../helpers/bundle.js';

const LIMITS: BundleLimits = defaultBundleLimits(10 * 1024 * 1024);

/** Resolves to the DomainError the promise rejected with; fails the test if it resolved or threw something else. */
async function rejection(p: Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<DomainError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof DomainError, `expected a DomainError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected ${code}, but it resolved`);
}

const invalidBundle = (entries: Parameters<typeof makeTarGz>[0], message?: RegExp, limits = LIMITS) =>
  makeTarGz(entries).then((data) => rejection(inspectBundle(data, limits), 'INVALID_BUNDLE', message));

describe('defaultBundleLimits', () => {
  it('bounds unpacked size at 8x the compressed size, but no less than 64 MiB', () => {
    assert.deepEqual(defaultBundleLimits(1024), { maxBytes: 1024, maxUnpackedBytes: 64 * 1024 * 1024, maxEntries: 256 });
    assert.equal(defaultBundleLimits(100 * 1024 * 1024).maxUnpackedBytes, 800 * 1024 * 1024);
  });
});

describe('inspectBundle accepts', () => {
  it('a valid bundle, returning its sha256, data and sorted file list', async () => {
    const data = await validBundle([{ name: 'host.crt', content: 'x' }, { name: 'certs', type: 'directory' }, { name: 'certs/a.key', content: 'k' }]);
    const r = await inspectBundle(data, LIMITS);
    assert.equal(r.sha256, createHash('sha256').update(data).digest('hex'));
    assert.equal(r.data, data);
    assert.deepEqual(r.files, ['ca.crt', 'certs/a.key', 'config.yml', 'host.crt']);
  });

  it('entries named ./config.yml and ./ca.crt', async () => {
    const data = await makeTarGz([
      { name: './config.yml', content: CONFIG_YML },
      { name: './ca.crt', content: CA_PEM },
    ]);
    const r = await inspectBundle(data, LIMITS);
    assert.deepEqual(r.files, ['ca.crt', 'config.yml']);
  });

  it('a bundle laid out like `tar -C dir -czf b.tar.gz .` (a leading ./ directory entry)', async () => {
    // GNU tar writes "./" first, then "./ca.crt", "./config.yml": the usual way to pack a folder.
    const data = await makeTarGz([
      { name: './', type: 'directory' },
      { name: './ca.crt', content: CA_PEM },
      { name: './config.yml', content: CONFIG_YML },
    ]);
    const r = await inspectBundle(data, LIMITS);
    assert.deepEqual(r.files, ['ca.crt', 'config.yml']);
  });

  it('a bundle at exactly maxBytes', async () => {
    const data = await validBundle();
    const r = await inspectBundle(data, { ...LIMITS, maxBytes: data.length });
    assert.equal(r.data.length, data.length);
  });
});

describe('inspectBundle rejects', () => {
  it('data that is not gzip', async () => {
    await rejection(inspectBundle(Buffer.from('config.yml: not an archive'), LIMITS), 'INVALID_BUNDLE', /gzip/);
    await rejection(inspectBundle(Buffer.alloc(0), LIMITS), 'INVALID_BUNDLE', /gzip/);
    await rejection(inspectBundle(Buffer.from([0x1f]), LIMITS), 'INVALID_BUNDLE', /gzip/);
  });

  it('a truncated gzip stream, at every cut point, without an uncaught exception', async () => {
    // Run in a child process: an 'error' event nobody listens to would crash a server process,
    // and here it would only surface as a stray error after the test ended.
    const data = await validBundle();
    const moduleUrl = new URL('../../server/src/domain/bundle-archive.js', import.meta.url).href;
    const script = `
      const { inspectBundle, defaultBundleLimits } = await import(${JSON.stringify(moduleUrl)});
      const uncaught = [];
      process.on('uncaughtException', (e) => uncaught.push(e.message));
      const data = Buffer.from(${JSON.stringify(data.toString('base64'))}, 'base64');
      const codes = {};
      for (let cut = 2; cut < data.length; cut++) {
        let code = 'resolved';
        try { await inspectBundle(data.subarray(0, cut), defaultBundleLimits(1 << 20)); } catch (e) { code = e.code ?? e.message; }
        codes[code] = (codes[code] ?? 0) + 1;
      }
      await new Promise((r) => setTimeout(r, 50));
      process.stdout.write(JSON.stringify({ codes, uncaught: [...new Set(uncaught)], uncaughtCount: uncaught.length }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, `child exited ${r.status}: ${r.stderr}`);
    const out = JSON.parse(r.stdout) as { codes: Record<string, number>; uncaught: string[]; uncaughtCount: number };
    assert.deepEqual(Object.keys(out.codes), ['INVALID_BUNDLE'], JSON.stringify(out.codes));
    assert.deepEqual(out.uncaught, [], `${out.uncaughtCount} uncaught exception(s) while rejecting truncated bundles`);
  });

  it('gzip of non-tar garbage', async () => {
    await rejection(inspectBundle(gzipSync(randomBytes(4096)), LIMITS), 'INVALID_BUNDLE');
  });

  it('gzip of text that is not a tar', async () => {
    await rejection(inspectBundle(gzipSync(Buffer.from('pki:\n  ca: x\n'.repeat(100))), LIMITS), 'INVALID_BUNDLE');
  });

  it('a bundle without config.yml', async () => {
    await invalidBundle([{ name: 'ca.crt', content: CA_PEM }], /config\.yml/);
  });

  it('a bundle without ca.crt', async () => {
    await invalidBundle([{ name: 'config.yml', content: CONFIG_YML }], /ca\.crt/);
  });

  it('config.yml nested in a folder does not count as config.yml', async () => {
    await invalidBundle([{ name: 'etc/config.yml', content: CONFIG_YML }, { name: 'ca.crt', content: CA_PEM }], /lacks config\.yml/);
  });

  it('an empty tar', async () => {
    await invalidBundle([], /lacks/);
  });

  it('config.yml that is not valid YAML', async () => {
    await invalidBundle([{ name: 'config.yml', content: 'pki: [unclosed\n  ca: {' }, { name: 'ca.crt', content: CA_PEM }], /YAML/);
  });

  it('config.yml with duplicate keys', async () => {
    await invalidBundle([{ name: 'config.yml', content: 'a: 1\na: 2\n' }, { name: 'ca.crt', content: CA_PEM }], /YAML/);
  });

  for (const [label, yml] of [
    ['a list', '- a\n- b\n'],
    ['a scalar', 'just a string\n'],
    ['a number', '42\n'],
    ['empty', ''],
  ] as const) {
    it(`config.yml that is ${label}`, async () => {
      await invalidBundle([{ name: 'config.yml', content: yml }, { name: 'ca.crt', content: CA_PEM }], /mapping/);
    });
  }

  it('ca.crt that is not PEM', async () => {
    await invalidBundle([{ name: 'config.yml', content: CONFIG_YML }, { name: 'ca.crt', content: 'not a certificate' }], /PEM/);
  });

  it('an absolute path', async () => {
    await invalidBundle([...(await baseEntries()), { name: '/etc/passwd', content: 'x' }], /absolute/);
  });

  for (const name of ['../x', 'a/../../x', 'a/..', '..', 'a/b/../../../x']) {
    it(`.. traversal: ${name}`, async () => {
      await invalidBundle([...(await baseEntries()), { name, content: 'x' }], /\.\./);
    });
  }

  it('a .. traversal in a directory entry', async () => {
    await invalidBundle([...(await baseEntries()), { name: '../evil', type: 'directory' }], /\.\./);
  });

  it('a symlink', async () => {
    await invalidBundle([...(await baseEntries()), { name: 'link', type: 'symlink', linkname: '/etc/passwd' }], /symlink/);
  });

  it('a symlink named like a required file', async () => {
    await invalidBundle(
      [{ name: 'config.yml', type: 'symlink', linkname: '/etc/passwd' }, { name: 'ca.crt', content: CA_PEM }],
      /symlink/,
    );
  });

  it('a hardlink', async () => {
    await invalidBundle([...(await baseEntries()), { name: 'hard', type: 'link', linkname: 'config.yml' }], /link/);
  });

  it('a duplicate entry', async () => {
    await invalidBundle([...(await baseEntries()), { name: 'config.yml', content: 'other: 1\n' }], /twice/);
  });

  it('a duplicate entry spelt differently (./config.yml after config.yml)', async () => {
    await invalidBundle([...(await baseEntries()), { name: './config.yml', content: 'other: 1\n' }], /twice/);
  });

  it('more files than maxEntries', async () => {
    const extra = Array.from({ length: 10 }, (_, i) => ({ name: `f${i}`, content: 'x' }));
    const data = await makeTarGz([...(await baseEntries()), ...extra]);
    // 12 files: fine with 12, refused with 11.
    await inspectBundle(data, { ...LIMITS, maxEntries: 12 });
    await rejection(inspectBundle(data, { ...LIMITS, maxEntries: 11 }), 'INVALID_BUNDLE', /more than 11 entries/);
  });

  it('more than the default 256 entries', async () => {
    const extra = Array.from({ length: 300 }, (_, i) => ({ name: `f${i}`, content: '' }));
    await invalidBundle([...(await baseEntries()), ...extra], /entries/);
  });

  it('more entries than maxEntries when the extra entries are directories', async () => {
    // Directory entries cost work to walk too; the entry limit should bound every entry.
    const dirs = Array.from({ length: 50 }, (_, i) => ({ name: `d${i}`, type: 'directory' as const }));
    const data = await makeTarGz([...(await baseEntries()), ...dirs]);
    await rejection(inspectBundle(data, { ...LIMITS, maxEntries: 10 }), 'INVALID_BUNDLE', /entries/);
  });

  it('compressed data over maxBytes (PAYLOAD_TOO_LARGE)', async () => {
    const data = await validBundle();
    await rejection(inspectBundle(data, { ...LIMITS, maxBytes: data.length - 1 }), 'PAYLOAD_TOO_LARGE');
  });

  it('a decompression bomb over maxUnpackedBytes (PAYLOAD_TOO_LARGE)', async () => {
    const zeros = Buffer.alloc(8 * 1024 * 1024);
    const data = await validBundle([{ name: 'bomb.bin', content: zeros }]);
    assert.ok(data.length < 64 * 1024, `the bomb should compress tiny, got ${data.length} bytes`);
    const limits: BundleLimits = { maxBytes: 64 * 1024, maxUnpackedBytes: 1024 * 1024, maxEntries: 256 };
    await rejection(inspectBundle(data, limits), 'PAYLOAD_TOO_LARGE', /unpacks/);
    // The same bundle passes when the unpacked limit allows it: the refusal is the limit's doing.
    await inspectBundle(data, { ...limits, maxUnpackedBytes: 16 * 1024 * 1024 });
  });

  it('a decompression bomb hidden in config.yml', async () => {
    const yml = Buffer.concat([Buffer.from('a: "'), Buffer.alloc(4 * 1024 * 1024, 0x61), Buffer.from('"\n')]);
    const data = await makeTarGz([{ name: 'config.yml', content: yml }, { name: 'ca.crt', content: CA_PEM }]);
    await rejection(inspectBundle(data, { maxBytes: 1024 * 1024, maxUnpackedBytes: 1024 * 1024, maxEntries: 256 }), 'PAYLOAD_TOO_LARGE');
  });

  it('a decompression bomb spread over many small files', async () => {
    const files = Array.from({ length: 20 }, (_, i) => ({ name: `z${i}`, content: Buffer.alloc(100 * 1024) }));
    const data = await validBundle(files);
    await rejection(inspectBundle(data, { maxBytes: 1024 * 1024, maxUnpackedBytes: 1024 * 1024, maxEntries: 256 }), 'PAYLOAD_TOO_LARGE');
  });
});

describe('normaliseEntryName', () => {
  it('normalises ./ and trailing slashes', () => {
    assert.equal(normaliseEntryName('./config.yml'), 'config.yml');
    assert.equal(normaliseEntryName('certs/'), 'certs');
    assert.equal(normaliseEntryName('a//b'), 'a/b');
  });
  it('refuses empty, NUL, backslash, absolute and .. names', () => {
    for (const n of ['', 'a\0b', 'a\\b', '/abs', '..', '../x', 'a/../../x'])
      assert.throws(() => normaliseEntryName(n), (e: unknown) => e instanceof DomainError && e.code === 'INVALID_BUNDLE', JSON.stringify(n));
  });
});

describe('readLimited', () => {
  it('returns every byte when under the limit', async () => {
    async function* src(): AsyncGenerator<Uint8Array> {
      yield Buffer.from('abc');
      yield new Uint8Array([100, 101]);
      yield Buffer.from('xyzf').subarray(1, 3);
    }
    assert.deepEqual(await readLimited(src(), 100), Buffer.from('abcdeyz'));
  });

  it('accepts exactly the limit', async () => {
    async function* src(): AsyncGenerator<Uint8Array> {
      yield Buffer.alloc(50);
      yield Buffer.alloc(50);
    }
    assert.equal((await readLimited(src(), 100)).length, 100);
  });

  it('stops pulling as soon as the limit is passed and throws PAYLOAD_TOO_LARGE', async () => {
    const CHUNK = 1024;
    const LIMIT = 10 * CHUNK + 100;
    let pulled = 0;
    let closed = false;
    async function* endless(): AsyncGenerator<Uint8Array> {
      try {
        // Would yield 1 GiB if read to the end.
        for (let i = 0; i < 1024 * 1024; i++) {
          pulled++;
          yield Buffer.alloc(CHUNK, 7);
        }
      } finally {
        closed = true;
      }
    }
    await rejection(readLimited(endless(), LIMIT), 'PAYLOAD_TOO_LARGE');
    // 11 chunks reach 11264 > 10340: it must stop right there.
    assert.equal(pulled, 11);
    assert.ok(pulled * CHUNK - LIMIT < CHUNK, 'consumed more than one chunk past the limit');
    assert.equal(closed, true, 'the source should be closed (return()) after the refusal');
  });
});

async function baseEntries(): Promise<{ name: string; content: string }[]> {
  return [
    { name: 'config.yml', content: CONFIG_YML },
    { name: 'ca.crt', content: CA_PEM },
  ];
}
