import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { sigV4, startFakeS3, type FakeS3 } from '../fakes/fake-s3.js';
import { waitUntil } from '../helpers/cluster.js';

/**
 * Pins the fake S3 (../fakes/fake-s3.ts) with hand-signed requests over real HTTP, then runs the
 * real litestream 0.3.13 against it: replicate, generations, restore, bad credentials and an
 * outage. The request signer below is this file's own, checked against AWS's published SigV4
 * example, so the fake's verifier is not tested against itself.
 */

const LITESTREAM = path.join(path.dirname(createRequire(import.meta.url).resolve('@flydotio/litestream-linux-x64/package.json')), 'litestream');
const AKID = 'AKIATESTFAKES3000001';
const SECRET = 'test-secret-key/0123456789+abcdefghijklmnop';
const REGION = 'us-east-1';
const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// A SigV4 signer for the tests (sig-v4-header-based-auth.html), written apart from the fake's.

const hex256 = (b: string | Buffer): string => createHash('sha256').update(b).digest('hex');
const b64md5 = (b: string | Buffer): string => createHash('md5').update(b).digest('base64');
const awsEncode = (s: string): string => encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());

interface Creds {
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

function authorization(method: string, key: string, query: [string, string][], headers: Record<string, string>, creds: Creds, amzDate: string): string {
  const names = Object.keys(headers).sort();
  const canonical = [
    method,
    key.split('/').map(awsEncode).join('/'),
    query
      .map(([k, v]) => `${awsEncode(k)}=${awsEncode(v)}`)
      .sort()
      .join('&'),
    names.map((n) => `${n}:${headers[n]!.trim()}\n`).join(''),
    names.join(';'),
    headers['x-amz-content-sha256']!,
  ].join('\n');
  const day = amzDate.slice(0, 8);
  const scope = `${day}/${creds.region}/s3/aws4_request`;
  const toSign = `AWS4-HMAC-SHA256\n${amzDate}\n${scope}\n${hex256(canonical)}`;
  let k: Buffer = createHmac('sha256', `AWS4${creds.secretAccessKey}`).update(day).digest();
  for (const part of [creds.region, 's3', 'aws4_request']) k = createHmac('sha256', k).update(part).digest();
  const sig = createHmac('sha256', k).update(toSign).digest('hex');
  return `AWS4-HMAC-SHA256 Credential=${creds.accessKeyId}/${scope}, SignedHeaders=${names.join(';')}, Signature=${sig}`;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  text: string;
}

interface CallOptions {
  query?: [string, string][];
  headers?: Record<string, string>;
  body?: Buffer | string;
  creds?: Partial<Creds>;
  /** Replaces x-amz-content-sha256 (signed as given). */
  payloadHash?: string;
  /** Headers changed after signing. */
  unsigned?: Record<string, string>;
  noAuth?: boolean;
}

function call(fake: FakeS3, method: string, key: string, o: CallOptions = {}): Promise<Reply> {
  const body = o.body === undefined ? Buffer.alloc(0) : Buffer.from(o.body);
  const host = new URL(fake.endpoint).host;
  const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
  const headers: Record<string, string> = {
    host,
    'x-amz-date': amzDate,
    'x-amz-content-sha256': o.payloadHash ?? hex256(body),
    ...Object.fromEntries(Object.entries(o.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v])),
  };
  const creds = { accessKeyId: AKID, secretAccessKey: SECRET, region: REGION, ...o.creds };
  const query = o.query ?? [];
  const sent: Record<string, string> = { ...headers, ...o.unsigned, 'content-length': String(body.length) };
  if (!o.noAuth) sent.authorization = authorization(method, key, query, headers, creds, amzDate);
  const qs = query.map(([k, v]) => (v === '' ? awsEncode(k) : `${awsEncode(k)}=${awsEncode(v)}`)).join('&');
  const url = `${fake.endpoint}${key.split('/').map(awsEncode).join('/')}${qs ? `?${qs}` : ''}`;
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: sent, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const b = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: b, text: b.toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const tag = (xml: string, name: string): string[] => [...xml.matchAll(new RegExp(`<${name}>([\\s\\S]*?)</${name}>`, 'g'))].map((m) => m[1]!);
const errorCode = (r: Reply): string | undefined => tag(r.text, 'Code')[0];
const md5hex = (b: Buffer | string): string => createHash('md5').update(b).digest('hex');

// ---------------------------------------------------------------------------------------------

describe('SigV4, against AWS published example (GET Object, sig-v4-header-based-auth.html)', () => {
  // GET /test.txt on examplebucket, Range bytes=0-9, empty payload, 20130524T000000Z, us-east-1.
  const example = {
    headers: { host: 'examplebucket.s3.amazonaws.com', range: 'bytes=0-9', 'x-amz-content-sha256': hex256(''), 'x-amz-date': '20130524T000000Z' },
    creds: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', region: 'us-east-1' },
    signature: 'f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41',
  };

  it("the tests' signer gives the documented signature", () => {
    const auth = authorization('GET', '/test.txt', [], example.headers, example.creds, '20130524T000000Z');
    assert.equal(
      auth,
      `AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=${example.signature}`,
    );
  });

  it("the fake's verifier computes the same one from the request as received", () => {
    const got = sigV4({
      method: 'GET',
      path: '/test.txt',
      query: '',
      headers: Object.fromEntries(Object.entries(example.headers).map(([k, v]) => [k, [v]])),
      signedHeaders: ['host', 'range', 'x-amz-content-sha256', 'x-amz-date'],
      payloadHash: example.headers['x-amz-content-sha256'],
      amzDate: '20130524T000000Z',
      region: 'us-east-1',
      secretAccessKey: example.creds.secretAccessKey,
    });
    assert.equal(
      got.canonicalRequest,
      [
        'GET',
        '/test.txt',
        '',
        'host:examplebucket.s3.amazonaws.com',
        'range:bytes=0-9',
        `x-amz-content-sha256:${hex256('')}`,
        'x-amz-date:20130524T000000Z',
        '',
        'host;range;x-amz-content-sha256;x-amz-date',
        hex256(''),
      ].join('\n'),
    );
    assert.equal(got.stringToSign, 'AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972');
    assert.equal(got.signature, example.signature);
  });

  it('canonicalises an encoded path once and a query by sorted, re-encoded pairs', () => {
    const base = { method: 'GET', headers: { host: ['h'] }, signedHeaders: ['host'], payloadHash: 'UNSIGNED-PAYLOAD', amzDate: '20240101T000000Z', region: 'us-east-1', secretAccessKey: 's' };
    const a = sigV4({ ...base, path: '/b/a%20b%2Bc', query: 'prefix=x%2Fy&delimiter=%2F' });
    assert.equal(a.canonicalRequest.split('\n')[1], '/b/a%20b%2Bc');
    assert.equal(a.canonicalRequest.split('\n')[2], 'delimiter=%2F&prefix=x%2Fy');
    assert.equal(sigV4({ ...base, path: '/b/a%20b%2Bc', query: 'delimiter=/&prefix=x/y' }).signature, a.signature, 'the same query, encoded differently on the wire');
  });
});

describe('fake S3 over HTTP', { timeout: 30_000 }, () => {
  let fake: FakeS3;
  before(async () => {
    fake = await startFakeS3({ accessKeyId: AKID, secretAccessKey: SECRET, region: REGION });
    fake.bucket('b');
  });
  after(() => fake.stop());

  it('PUT, GET, HEAD, Range and DELETE an object', async () => {
    const body = Buffer.from('hello, fake s3');
    const put = await call(fake, 'PUT', '/b/dir/hello.txt', { body, headers: { 'content-md5': b64md5(body), 'content-type': 'text/plain', 'x-amz-meta-owner': 'me' } });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.headers.etag, `"${md5hex(body)}"`);

    const get = await call(fake, 'GET', '/b/dir/hello.txt');
    assert.equal(get.status, 200);
    assert.deepEqual(get.body, body);
    assert.equal(get.headers['content-type'], 'text/plain');
    assert.equal(get.headers['x-amz-meta-owner'], 'me');
    assert.ok(get.headers['x-amz-request-id']);

    const head = await call(fake, 'HEAD', '/b/dir/hello.txt');
    assert.equal(head.status, 200);
    assert.equal(head.headers['content-length'], String(body.length));
    assert.equal(head.headers.etag, `"${md5hex(body)}"`);
    assert.equal(head.body.length, 0);

    const part = await call(fake, 'GET', '/b/dir/hello.txt', { headers: { range: 'bytes=7-10' } });
    assert.equal(part.status, 206);
    assert.equal(part.text, 'fake');
    assert.equal(part.headers['content-range'], `bytes 7-10/${body.length}`);
    const tail = await call(fake, 'GET', '/b/dir/hello.txt', { headers: { range: 'bytes=-2' } });
    assert.equal(tail.text, 's3');
    const beyond = await call(fake, 'GET', '/b/dir/hello.txt', { headers: { range: 'bytes=100-' } });
    assert.equal(beyond.status, 416);
    assert.equal(errorCode(beyond), 'InvalidRange');

    assert.equal((await call(fake, 'DELETE', '/b/dir/hello.txt')).status, 204);
    const gone = await call(fake, 'GET', '/b/dir/hello.txt');
    assert.equal(gone.status, 404);
    assert.equal(errorCode(gone), 'NoSuchKey');
    assert.deepEqual(tag(gone.text, 'Key'), ['dir/hello.txt']);
    assert.match(gone.text, /^<\?xml[^>]*>\s*<Error><Code>/);
    const headGone = await call(fake, 'HEAD', '/b/dir/hello.txt');
    assert.equal(headGone.status, 404);
    assert.equal(headGone.body.length, 0, 'HEAD errors carry no body');
    assert.equal((await call(fake, 'DELETE', '/b/dir/hello.txt')).status, 204, 'deleting a missing key succeeds');
  });

  it('keys with spaces, plus signs and unicode round-trip', async () => {
    const key = '/b/odd keys/a+b ü~(1).txt';
    assert.equal((await call(fake, 'PUT', key, { body: 'x' })).status, 200);
    assert.ok(fake.objects('b').has('odd keys/a+b ü~(1).txt'));
    assert.equal((await call(fake, 'GET', key)).text, 'x');
    assert.equal((await call(fake, 'DELETE', key)).status, 204);
  });

  it('checks the body against x-amz-content-sha256 and Content-MD5; takes UNSIGNED-PAYLOAD', async () => {
    const wrongHash = await call(fake, 'PUT', '/b/k', { body: 'abc', payloadHash: hex256('abd') });
    assert.equal(wrongHash.status, 400);
    assert.equal(errorCode(wrongHash), 'XAmzContentSHA256Mismatch');
    const wrongMd5 = await call(fake, 'PUT', '/b/k', { body: 'abc', headers: { 'content-md5': b64md5('abd') } });
    assert.equal(errorCode(wrongMd5), 'BadDigest');
    assert.equal((await call(fake, 'PUT', '/b/k', { body: 'abc', payloadHash: 'UNSIGNED-PAYLOAD' })).status, 200);
    assert.equal(fake.objects('b').get('k')?.toString(), 'abc');
    assert.equal((await call(fake, 'DELETE', '/b/k')).status, 204);
  });

  it('decodes an aws-chunked (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) body', async () => {
    const data = randomBytes(70_000);
    const sizes = [65_536, data.length - 65_536, 0];
    let at = 0;
    const framed = Buffer.concat(
      sizes.map((n) => {
        const chunk = data.subarray(at, at + n);
        at += n;
        return Buffer.concat([Buffer.from(`${n.toString(16)};chunk-signature=${'0'.repeat(64)}\r\n`), chunk, Buffer.from('\r\n')]);
      }),
    );
    const r = await call(fake, 'PUT', '/b/chunked', {
      body: framed,
      payloadHash: 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD',
      headers: { 'content-encoding': 'aws-chunked', 'x-amz-decoded-content-length': String(data.length) },
    });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(fake.objects('b').get('chunked'), data);
    const short = await call(fake, 'PUT', '/b/chunked', { body: framed, payloadHash: 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD', headers: { 'x-amz-decoded-content-length': '5' } });
    assert.equal(errorCode(short), 'IncompleteBody');
    await call(fake, 'DELETE', '/b/chunked');
  });

  it('refuses an unknown access key, a wrong secret, a tampered header, a wrong region, no auth', async () => {
    const badKey = await call(fake, 'GET', '/b/x', { creds: { accessKeyId: 'AKIANOBODY0000000000' } });
    assert.equal(badKey.status, 403);
    assert.equal(errorCode(badKey), 'InvalidAccessKeyId');
    assert.deepEqual(tag(badKey.text, 'AWSAccessKeyId'), ['AKIANOBODY0000000000']);

    const badSecret = await call(fake, 'GET', '/b/x', { creds: { secretAccessKey: 'not-the-secret' } });
    assert.equal(badSecret.status, 403);
    assert.equal(errorCode(badSecret), 'SignatureDoesNotMatch');
    assert.match(tag(badSecret.text, 'StringToSign')[0] ?? '', /^AWS4-HMAC-SHA256\n\d{8}T\d{6}Z\n\d{8}\/us-east-1\/s3\/aws4_request\n[0-9a-f]{64}$/);
    assert.match(tag(badSecret.text, 'CanonicalRequest')[0] ?? '', /^GET\n\/b\/x\n/);

    const tampered = await call(fake, 'GET', '/b/x', { headers: { range: 'bytes=0-1' }, unsigned: { range: 'bytes=0-2' } });
    assert.equal(errorCode(tampered), 'SignatureDoesNotMatch');

    const region = await call(fake, 'GET', '/b/x', { creds: { region: 'eu-west-1' } });
    assert.equal(region.status, 400);
    assert.equal(errorCode(region), 'AuthorizationHeaderMalformed');
    assert.deepEqual(tag(region.text, 'Region'), ['us-east-1']);

    const anonymous = await call(fake, 'GET', '/b/x', { noAuth: true });
    assert.equal(anonymous.status, 403);
    assert.equal(errorCode(anonymous), 'AccessDenied');
  });

  it('answers NoSuchBucket for an unknown bucket; HEAD bucket and GetBucketLocation for a known one', async () => {
    const r = await call(fake, 'GET', '/nope/x');
    assert.equal(r.status, 404);
    assert.equal(errorCode(r), 'NoSuchBucket');
    assert.equal((await call(fake, 'HEAD', '/nope')).status, 404);
    const head = await call(fake, 'HEAD', '/b');
    assert.equal(head.status, 200);
    assert.equal(head.headers['x-amz-bucket-region'], 'us-east-1');
    const loc = await call(fake, 'GET', '/b', { query: [['location', '']] });
    assert.equal(loc.status, 200);
    assert.match(loc.text, /<LocationConstraint xmlns="http:\/\/s3\.amazonaws\.com\/doc\/2006-03-01\/"><\/LocationConstraint>/);
  });

  it('deletes many objects at once (POST ?delete), quiet or not; requires Content-MD5', async () => {
    for (const k of ['d/1', 'd/2', 'd/3']) await call(fake, 'PUT', `/b/${k}`, { body: k });
    const xml = (quiet: boolean, keys: string[]): string =>
      `<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${keys.map((k) => `<Object><Key>${k}</Key></Object>`).join('')}${quiet ? '<Quiet>true</Quiet>' : ''}</Delete>`;
    const loud = xml(false, ['d/1', 'd/missing']);
    const r = await call(fake, 'POST', '/b', { query: [['delete', '']], body: loud, headers: { 'content-md5': b64md5(loud) } });
    assert.equal(r.status, 200, r.text);
    assert.match(r.text, /^<\?xml[^>]*>\s*<DeleteResult xmlns="http:\/\/s3\.amazonaws\.com\/doc\/2006-03-01\/">/);
    assert.deepEqual(tag(r.text, 'Key'), ['d/1', 'd/missing'], 'a missing key is reported deleted, as S3 does');

    const quiet = xml(true, ['d/2', 'd/3']);
    const q = await call(fake, 'POST', '/b', { query: [['delete', '']], body: quiet, headers: { 'content-md5': b64md5(quiet) } });
    assert.equal(q.status, 200);
    assert.deepEqual(tag(q.text, 'Deleted'), []);
    assert.deepEqual([...fake.objects('b').keys()].filter((k) => k.startsWith('d/')), []);

    const noMd5 = await call(fake, 'POST', '/b', { query: [['delete', '']], body: quiet });
    assert.equal(noMd5.status, 400);
    assert.equal(errorCode(noMd5), 'InvalidRequest');
    const junk = await call(fake, 'POST', '/b', { query: [['delete', '']], body: '<Nope/>', headers: { 'content-md5': b64md5('<Nope/>') } });
    assert.equal(errorCode(junk), 'MalformedXML');
  });

  describe('listings', () => {
    // Litestream's layout: <path>/generations/<gen>/{snapshots,wal}/<file>.
    const keys = [
      'db/generations/0123456789abcdef/snapshots/00000000.snapshot.lz4',
      'db/generations/0123456789abcdef/wal/00000000_00000000.wal.lz4',
      'db/generations/0123456789abcdef/wal/00000000_00001000.wal.lz4',
      'db/generations/fedcba9876543210/snapshots/00000003.snapshot.lz4',
      'db/generations/fedcba9876543210/wal/00000003_00000000.wal.lz4',
      'db/top.txt',
      'other/x',
    ];
    before(async () => {
      fake.bucket('l');
      for (const k of keys) assert.equal((await call(fake, 'PUT', `/l/${k}`, { body: k })).status, 200);
    });

    const v1 = async (q: [string, string][]): Promise<string> => {
      const r = await call(fake, 'GET', '/l', { query: q });
      assert.equal(r.status, 200, r.text);
      assert.match(r.text, /<ListBucketResult xmlns="http:\/\/s3\.amazonaws\.com\/doc\/2006-03-01\/">/);
      return r.text;
    };

    it('v1 with a delimiter rolls nested keys up into CommonPrefixes', async () => {
      const gens = await v1([['prefix', 'db/generations/'], ['delimiter', '/']]);
      assert.deepEqual(tag(gens, 'Prefix'), ['db/generations/', 'db/generations/0123456789abcdef/', 'db/generations/fedcba9876543210/']);
      assert.deepEqual(tag(gens, 'Key'), []);
      assert.deepEqual(tag(gens, 'IsTruncated'), ['false']);
      assert.deepEqual(tag(gens, 'Delimiter'), ['/']);

      const top = await v1([['prefix', 'db/'], ['delimiter', '/']]);
      assert.deepEqual(tag(top, 'Key'), ['db/top.txt']);
      assert.deepEqual(tag(tag(top, 'CommonPrefixes').join(''), 'Prefix'), ['db/generations/']);

      const wal = await v1([['prefix', 'db/generations/0123456789abcdef/wal/'], ['delimiter', '/']]);
      assert.deepEqual(tag(wal, 'Key'), [keys[1], keys[2]]);
      assert.deepEqual(tag(wal, 'Size'), [String(keys[1]!.length), String(keys[2]!.length)]);
      assert.deepEqual(tag(wal, 'ETag'), [`&quot;${md5hex(keys[1]!)}&quot;`, `&quot;${md5hex(keys[2]!)}&quot;`], 'quoted, as S3 writes ETags');
      assert.match(tag(wal, 'LastModified')[0]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/);
      assert.equal(tag(wal, 'Owner').length, 2, 'v1 lists owners');
    });

    it('v1 without a delimiter lists every key under the prefix, in order', async () => {
      const all = await v1([['prefix', 'db/']]);
      assert.deepEqual(tag(all, 'Key'), keys.slice(0, 6));
      assert.deepEqual(tag(all, 'CommonPrefixes'), []);
    });

    it('v1 pages with max-keys and Marker: NextMarker with a delimiter, the last key without', async () => {
      const seen: string[] = [];
      let marker: string | undefined;
      for (let pages = 0; ; pages++) {
        assert.ok(pages < 10, 'pagination ends');
        const xml = await v1([['prefix', 'db/'], ['delimiter', '/'], ['max-keys', '1'], ...(marker ? [['marker', marker] as [string, string]] : [])]);
        seen.push(...tag(xml, 'Key'), ...tag(tag(xml, 'CommonPrefixes').join(''), 'Prefix'));
        if (tag(xml, 'IsTruncated')[0] !== 'true') break;
        marker = tag(xml, 'NextMarker')[0];
        assert.ok(marker, 'NextMarker on a truncated delimiter listing');
      }
      assert.deepEqual(seen, ['db/generations/', 'db/top.txt']);

      const first = await v1([['prefix', 'db/'], ['max-keys', '2']]);
      assert.deepEqual(tag(first, 'IsTruncated'), ['true']);
      assert.deepEqual(tag(first, 'NextMarker'), [], 'no NextMarker without a delimiter');
      const next = await v1([['prefix', 'db/'], ['max-keys', '2'], ['marker', tag(first, 'Key')[1]!]]);
      assert.deepEqual(tag(next, 'Key'), keys.slice(2, 4));
      assert.deepEqual(tag(next, 'Marker'), [keys[1]]);
    });

    it('v2 with a delimiter: CommonPrefixes and KeyCount; pages by continuation token; StartAfter', async () => {
      const v2 = async (q: [string, string][]): Promise<string> => {
        const r = await call(fake, 'GET', '/l', { query: [['list-type', '2'], ...q] });
        assert.equal(r.status, 200, r.text);
        return r.text;
      };
      const gens = await v2([['prefix', 'db/generations/'], ['delimiter', '/']]);
      assert.deepEqual(tag(tag(gens, 'CommonPrefixes').join(''), 'Prefix'), ['db/generations/0123456789abcdef/', 'db/generations/fedcba9876543210/']);
      assert.deepEqual(tag(gens, 'KeyCount'), ['2']);
      assert.deepEqual(tag(gens, 'Owner'), [], 'v2 lists owners only with fetch-owner');

      const seen: string[] = [];
      let token: string | undefined;
      for (let pages = 0; ; pages++) {
        assert.ok(pages < 10, 'pagination ends');
        const xml = await v2([['prefix', 'db/generations/'], ['max-keys', '2'], ...(token ? [['continuation-token', token] as [string, string]] : [])]);
        assert.deepEqual(tag(xml, 'ContinuationToken'), token ? [token] : []);
        seen.push(...tag(xml, 'Key'));
        if (tag(xml, 'IsTruncated')[0] !== 'true') {
          assert.deepEqual(tag(xml, 'NextContinuationToken'), []);
          break;
        }
        token = tag(xml, 'NextContinuationToken')[0];
      }
      assert.deepEqual(seen, keys.slice(0, 5));

      const after = await v2([['prefix', 'db/'], ['start-after', keys[3]!]]);
      assert.deepEqual(tag(after, 'Key'), keys.slice(4, 6));
      assert.deepEqual(tag(after, 'StartAfter'), [keys[3]]);
      const bad = await call(fake, 'GET', '/l', { query: [['list-type', '2'], ['continuation-token', 'not a token']] });
      assert.equal(errorCode(bad), 'InvalidArgument');
    });

    it('encoding-type=url encodes the names it returns', async () => {
      await call(fake, 'PUT', '/l/sp ace/k', { body: 'x' });
      const xml = await v1([['prefix', 'sp'], ['delimiter', '/'], ['encoding-type', 'url']]);
      assert.deepEqual(tag(tag(xml, 'CommonPrefixes').join(''), 'Prefix'), ['sp%20ace/']);
      assert.deepEqual(tag(xml, 'EncodingType'), ['url']);
    });
  });

  describe('multipart upload', () => {
    const part1 = randomBytes(5 * MiB);
    const part2 = randomBytes(1234);
    const completeXml = (parts: [number, string][]): string =>
      `<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${parts.map(([n, e]) => `<Part><ETag>${e}</ETag><PartNumber>${n}</PartNumber></Part>`).join('')}</CompleteMultipartUpload>`;
    const create = async (key: string): Promise<string> => {
      const r = await call(fake, 'POST', key, { query: [['uploads', '']] });
      assert.equal(r.status, 200, r.text);
      assert.match(r.text, /<InitiateMultipartUploadResult xmlns="http:\/\/s3\.amazonaws\.com\/doc\/2006-03-01\/">/);
      return tag(r.text, 'UploadId')[0]!;
    };
    const upload = async (key: string, id: string, n: number, body: Buffer): Promise<Reply> =>
      call(fake, 'PUT', key, { query: [['partNumber', String(n)], ['uploadId', id]], body, headers: { 'content-md5': b64md5(body) } });
    const complete = (key: string, id: string, parts: [number, string][]): Promise<Reply> =>
      call(fake, 'POST', key, { query: [['uploadId', id]], body: completeXml(parts) });

    it('assembles the parts into one object with a multipart ETag', async () => {
      const id = await create('/b/big');
      const r2 = await upload('/b/big', id, 2, part2);
      const r1 = await upload('/b/big', id, 1, part1);
      assert.equal(r1.headers.etag, `"${md5hex(part1)}"`);
      const done = await complete('/b/big', id, [
        [1, r1.headers.etag!],
        [2, r2.headers.etag!],
      ]);
      assert.equal(done.status, 200, done.text);
      const etag = `"${createHash('md5').update(Buffer.concat([createHash('md5').update(part1).digest(), createHash('md5').update(part2).digest()])).digest('hex')}-2"`;
      assert.deepEqual(tag(done.text, 'ETag'), [etag.replace(/"/g, '&quot;')]);
      assert.deepEqual(tag(done.text, 'Key'), ['big']);
      assert.deepEqual(fake.objects('b').get('big'), Buffer.concat([part1, part2]));
      const head = await call(fake, 'HEAD', '/b/big');
      assert.equal(head.headers.etag, etag);
      assert.equal(errorCode(await upload('/b/big', id, 3, part2)), 'NoSuchUpload', 'a completed upload is gone');
    });

    it('refuses a small non-last part, a wrong ETag, parts out of order; abort ends the upload', async () => {
      const id = await create('/b/bad');
      const small = await upload('/b/bad', id, 1, part2);
      const big = await upload('/b/bad', id, 2, part1);
      assert.equal(errorCode(await complete('/b/bad', id, [[1, small.headers.etag!], [2, big.headers.etag!]])), 'EntityTooSmall');
      assert.equal(errorCode(await complete('/b/bad', id, [[1, `"${'0'.repeat(32)}"`]])), 'InvalidPart');
      assert.equal(errorCode(await complete('/b/bad', id, [[2, big.headers.etag!], [1, small.headers.etag!]])), 'InvalidPartOrder');
      assert.equal((await call(fake, 'DELETE', '/b/bad', { query: [['uploadId', id]] })).status, 204);
      assert.equal(errorCode(await upload('/b/bad', id, 1, part2)), 'NoSuchUpload');
      assert.equal(fake.objects('b').has('bad'), false);
    });
  });

  it('failNext answers the next matching request with an S3 error, once', async () => {
    fake.failNext({ op: 'PutObject', status: 503, code: 'SlowDown', message: 'Please reduce your request rate.' });
    assert.equal((await call(fake, 'GET', '/b/nothing')).status, 404, 'another operation is not affected');
    const failed = await call(fake, 'PUT', '/b/f', { body: 'x' });
    assert.equal(failed.status, 503);
    assert.equal(errorCode(failed), 'SlowDown');
    assert.equal((await call(fake, 'PUT', '/b/f', { body: 'x' })).status, 200);
  });

  it('setUnavailable: 503 ServiceUnavailable, or dropped connections; then back', async () => {
    fake.setUnavailable(true, '503');
    const r = await call(fake, 'GET', '/b/f');
    assert.equal(r.status, 503);
    assert.equal(errorCode(r), 'ServiceUnavailable');
    fake.setUnavailable(true);
    await assert.rejects(call(fake, 'GET', '/b/f'), /ECONNRESET|socket hang up/);
    fake.setUnavailable(false);
    assert.equal((await call(fake, 'GET', '/b/f')).text, 'x');
  });

  it('logs every request with its operation and status', () => {
    const ops = new Set(fake.requests.map((r) => r.op));
    for (const op of ['PutObject', 'GetObject', 'HeadObject', 'DeleteObject', 'DeleteObjects', 'ListObjects', 'ListObjectsV2', 'CreateMultipartUpload', 'UploadPart', 'CompleteMultipartUpload', 'AbortMultipartUpload', 'GetBucketLocation', 'HeadBucket']) {
      assert.ok(ops.has(op), op);
    }
    const dropped = fake.requests.filter((r) => r.status === 0);
    assert.ok(dropped.length >= 1, 'the dropped request is logged with status 0');
    const denied = fake.requests.find((r) => r.code === 'InvalidAccessKeyId');
    assert.deepEqual([denied?.method, denied?.status, denied?.bucket, denied?.key], ['GET', 403, 'b', 'x']);
  });
});

// ---------------------------------------------------------------------------------------------
// The real litestream against the fake.

describe('litestream 0.3.13 against the fake', { timeout: 60_000 }, () => {
  let fake: FakeS3;
  let dir: string;
  const children = new Set<ChildProcess>();

  before(async () => {
    fake = await startFakeS3({ accessKeyId: AKID, secretAccessKey: SECRET, region: REGION });
    dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-fake-s3-'));
  });
  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await fake.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A litestream.yml for one db with one s3 replica on the fake; `more` adds settings to the db and the replica. */
  function config(name: string, bucket: string, creds: { id: string; secret: string }, more: { db?: string[]; replica?: string[] } = {}): { cfg: string; db: string } {
    const db = path.join(dir, `${name}.db`);
    const cfg = path.join(dir, `${name}.yml`);
    const lines = [
      'dbs:',
      `  - path: ${db}`,
      '    monitor-interval: 100ms',
      ...(more.db ?? []).map((l) => `    ${l}`),
      '    replicas:',
      '      - type: s3',
      `        bucket: ${bucket}`,
      `        path: nebulagc/${name}`,
      `        endpoint: ${fake.endpoint}`,
      '        region: us-east-1',
      '        force-path-style: true',
      `        access-key-id: ${creds.id}`,
      `        secret-access-key: ${creds.secret}`,
      '        sync-interval: 100ms',
      ...(more.replica ?? []).map((l) => `        ${l}`),
    ];
    writeFileSync(cfg, lines.join('\n') + '\n', { mode: 0o600 });
    return { cfg, db };
  }

  function createDb(file: string): Database.Database {
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('busy_timeout = 5000');
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, blob BLOB)');
    return db;
  }

  /** Only PATH and a private HOME: no AWS_* of the calling shell reaches litestream. */
  const env = (): NodeJS.ProcessEnv => ({ PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir });

  function replicate(cfg: string): { child: ChildProcess; log: () => string; stop: () => Promise<number | null> } {
    const child = spawn(LITESTREAM, ['replicate', '-config', cfg], { env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    const keep = (b: Buffer): void => {
      out = (out + b.toString()).slice(-100_000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return {
      child,
      log: () => out,
      stop: async () => {
        child.kill('SIGTERM');
        const code = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 10_000))]);
        child.kill('SIGKILL');
        children.delete(child);
        return code;
      },
    };
  }

  /** Runs a litestream command to its end (asynchronously: the fake answers from this process). */
  function run(args: string[]): Promise<{ status: number | null; out: string }> {
    const child = spawn(LITESTREAM, args, { env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    return new Promise((resolve) =>
      child.once('close', (status) => {
        clearTimeout(timer);
        children.delete(child);
        resolve({ status, out });
      }),
    );
  }

  /**
   * Litestream has uploaded everything written before `since`: a WAL segment arrived after it,
   * and none for 5 sync intervals (with changes pending it syncs at every interval).
   */
  function caughtUp(bucket: string, since: number): Promise<boolean> {
    return waitUntil(() => {
      const last = fake.requests.filter((r) => r.bucket === bucket && r.op === 'PutObject' && r.status === 200 && r.key?.includes('/wal/')).pop();
      return last !== undefined && last.at >= since && Date.now() - last.at > 500;
    }, 15_000);
  }

  /**
   * SIGTERM ends `litestream replicate`. It exits 0, or 1 when its own shutdown races a checkpoint
   * (0.3.13's DB.Close: "checkpoint: mode=PASSIVE err=release read lock: context canceled").
   */
  async function stopped(ls: { stop: () => Promise<number | null>; log: () => string }): Promise<void> {
    const code = await ls.stop();
    assert.ok(code === 0 || (code === 1 && ls.log().includes('error closing db')), `exit ${code}\n${ls.log()}`);
  }

  /** `litestream restore` gives a sound database holding rows 1..n of t. */
  async function assertRestores(cfg: string, dbPath: string, name: string, n: number): Promise<void> {
    const out = path.join(dir, name);
    const restore = await run(['restore', '-config', cfg, '-o', out, dbPath]);
    assert.equal(restore.status, 0, restore.out);
    const restored = new Database(out, { readonly: true });
    try {
      assert.equal(restored.pragma('integrity_check', { simple: true }), 'ok');
      assert.deepEqual(restored.prepare('SELECT count(*) AS n, max(id) AS m FROM t').get(), { n, m: n });
    } finally {
      restored.close();
    }
  }

  it('replicates, lists a generation and restores every row (a >5 MiB snapshot goes multipart)', async () => {
    fake.bucket('backups');
    const { cfg, db: dbPath } = config('main', 'backups', { id: AKID, secret: SECRET });
    const db = createDb(dbPath);
    const blob = randomBytes(6 * MiB);
    db.prepare('INSERT INTO t (v, blob) VALUES (?, ?)').run('blob', blob);
    const ls = replicate(cfg);
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    let rows = 1;
    const until = Date.now() + 2500;
    while (Date.now() < until) {
      insert.run(`row ${++rows}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const lastWrite = Date.now();
    insert.run(`row ${++rows}`);
    assert.ok(await caughtUp('backups', lastWrite), `WAL segments uploaded after the last write, then quiet\n${ls.log()}`);
    await stopped(ls);
    db.close();

    const keys = [...fake.objects('backups').keys()];
    assert.ok(keys.some((k) => /^nebulagc\/main\/generations\/[0-9a-f]{16}\/snapshots\/[0-9a-f]{8}\.snapshot\.lz4$/.test(k)), keys.join('\n'));
    assert.ok(keys.some((k) => /\/wal\/[0-9a-f]{8}_[0-9a-f]{8}\.wal\.lz4$/.test(k)), keys.join('\n'));
    const ops = new Set(fake.requests.filter((r) => r.status < 300).map((r) => r.op));
    for (const op of ['ListObjects', 'PutObject', 'CreateMultipartUpload', 'UploadPart', 'CompleteMultipartUpload']) assert.ok(ops.has(op), `litestream used ${op}: ${[...ops].join(', ')}`);

    const gens = await run(['generations', '-config', cfg, dbPath]);
    assert.equal(gens.status, 0, gens.out);
    const listed = gens.out.split('\n').filter((l) => /^s3\s+[0-9a-f]{16}\s/.test(l));
    assert.equal(listed.length, 1, gens.out);

    await assertRestores(cfg, dbPath, 'restored.db', rows);
    assert.ok(fake.requests.some((r) => r.op === 'GetObject' && r.status === 200), 'restore downloaded objects');
    const restored = new Database(path.join(dir, 'restored.db'), { readonly: true });
    try {
      const back = (restored.prepare('SELECT blob FROM t WHERE v = ?').get('blob') as { blob: Buffer }).blob;
      assert.ok(back.equals(blob), 'the 6 MiB blob is restored byte for byte');
    } finally {
      restored.close();
    }
  });

  it('retention deletes old snapshots and WAL segments (DeleteObjects), and a restore still has every row', async () => {
    fake.bucket('retained');
    const { cfg, db: dbPath } = config('retained', 'retained', { id: AKID, secret: SECRET }, {
      db: ['checkpoint-interval: 300ms', 'min-checkpoint-page-count: 20'],
      replica: ['retention: 1s', 'retention-check-interval: 300ms'],
    });
    const db = createDb(dbPath);
    const ls = replicate(cfg);
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    let rows = 0;
    let firstSnapshot: string | undefined;
    const deleted = (): boolean => fake.requests.some((r) => r.op === 'DeleteObjects' && r.status === 200);
    const until = Date.now() + 15_000;
    while (Date.now() < until && !(firstSnapshot && deleted() && !fake.objects('retained').has(firstSnapshot))) {
      insert.run(`row ${++rows}`);
      firstSnapshot ??= [...fake.objects('retained').keys()].find((k) => k.includes('/snapshots/'));
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(firstSnapshot, ls.log());
    assert.ok(deleted(), `litestream deleted through DeleteObjects\n${ls.log()}`);
    assert.equal(fake.objects('retained').has(firstSnapshot), false, 'the first snapshot is gone');
    const lastWrite = Date.now();
    insert.run(`row ${++rows}`);
    assert.ok(await caughtUp('retained', lastWrite), `WAL segments uploaded after the last write, then quiet\n${ls.log()}`);
    await stopped(ls);
    db.close();
    await assertRestores(cfg, dbPath, 'retained-restored.db', rows);
  });

  it('with a wrong secret or an unknown key: the error is logged and nothing is uploaded', async () => {
    fake.bucket('denied');
    const wrongSecret = config('wrong-secret', 'denied', { id: AKID, secret: 'not-the-secret' });
    const wrongKey = config('wrong-key', 'denied', { id: 'AKIAUNKNOWN000000000', secret: SECRET });
    for (const c of [wrongSecret, wrongKey]) {
      const db = createDb(c.db);
      db.prepare('INSERT INTO t (v) VALUES (?)').run('x');
      db.close();
    }
    const a = replicate(wrongSecret.cfg);
    const b = replicate(wrongKey.cfg);
    assert.ok(await waitUntil(() => a.log().includes('SignatureDoesNotMatch'), 15_000), a.log());
    assert.ok(await waitUntil(() => b.log().includes('InvalidAccessKeyId'), 15_000), b.log());
    await Promise.all([a.stop(), b.stop()]);
    assert.deepEqual([...fake.objects('denied').keys()], []);
    const theirs = fake.requests.filter((r) => r.bucket === 'denied');
    assert.ok(theirs.length > 0);
    assert.deepEqual([...new Set(theirs.map((r) => r.status))], [403]);
  });

  it('through an outage (connections dropped): errors are logged, and replication resumes after it', async () => {
    fake.bucket('outage');
    const { cfg, db: dbPath } = config('outage', 'outage', { id: AKID, secret: SECRET });
    const db = createDb(dbPath);
    db.prepare('INSERT INTO t (v) VALUES (?)').run('before');
    const outage = Date.now();
    fake.setUnavailable(true);
    const ls = replicate(cfg);
    try {
      // Reset or EOF, depending on whether the SDK reused a connection; it retries, then the sync fails.
      assert.ok(await waitUntil(() => /monitor error.*send request failed/.test(ls.log()), 20_000), ls.log());
      assert.ok(fake.requests.some((r) => r.status === 0 && r.at >= outage), 'the fake dropped its connections');
      assert.equal(fake.objects('outage').size, 0);
      fake.setUnavailable(false);
      const lastWrite = Date.now();
      db.prepare('INSERT INTO t (v) VALUES (?)').run('after');
      assert.ok(await caughtUp('outage', lastWrite), `replication resumed once the endpoint was back\n${ls.log()}`);
      assert.ok([...fake.objects('outage').keys()].some((k) => k.includes('/snapshots/')));
    } finally {
      fake.setUnavailable(false);
      await stopped(ls);
      db.close();
    }
    await assertRestores(cfg, dbPath, 'outage-restored.db', 2);
  });

});
