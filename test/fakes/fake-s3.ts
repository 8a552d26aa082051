import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { buffer } from 'node:stream/consumers';

/**
 * An in-process S3-compatible server (path-style, storage in memory) for tests that run the
 * real `litestream` binary: no S3 server installs here, and s3rver answers a delimiter listing
 * of nested keys with no CommonPrefixes, so Litestream finds no generations against it.
 *
 * What it serves is what Litestream 0.3.13 (s3/replica_client.go, aws-sdk-go v1.44.318) calls:
 * ListObjects v1 paged by Marker (with Prefix and Delimiter "/" to find generations, snapshots and
 * WAL segments), GetObject, DeleteObjects (Quiet, in batches of 1000), and s3manager's Uploader:
 * PutObject for a body under its 5 MiB part size, else CreateMultipartUpload, UploadPart (5 MiB
 * parts, up to 5 at once), CompleteMultipartUpload and, on failure, AbortMultipartUpload.
 * GetBucketLocation is only called when no region and no endpoint are set. Also served, for other
 * clients: HeadObject, DeleteObject, ListObjectsV2, HeadBucket, CreateBucket, DeleteBucket,
 * ListBuckets. Anything else answers 501 NotImplemented.
 *
 * Shapes follow the S3 API reference (https://docs.aws.amazon.com/AmazonS3/latest/API/):
 * API_PutObject, API_GetObject (Range: 206 with Content-Range, 416 InvalidRange), API_HeadObject,
 * API_DeleteObject, API_DeleteObjects (Delete → DeleteResult), API_ListObjects (ListBucketResult
 * with Marker/NextMarker, NextMarker only with a delimiter), API_ListObjectsV2 (KeyCount,
 * ContinuationToken/NextContinuationToken, StartAfter), API_CreateMultipartUpload
 * (InitiateMultipartUploadResult), API_UploadPart, API_CompleteMultipartUpload
 * (CompleteMultipartUpload → CompleteMultipartUploadResult; InvalidPart, InvalidPartOrder,
 * EntityTooSmall), API_AbortMultipartUpload, API_GetBucketLocation (LocationConstraint, empty
 * for us-east-1), API_HeadBucket; errors per ErrorResponses.html (<Error><Code><Message>…
 * <RequestId><HostId>, no namespace). Keys and prefixes roll up into CommonPrefixes as the
 * ListObjectsV2 page says: everything between Prefix and the first delimiter after it, each
 * rolled-up prefix counting once against MaxKeys.
 *
 * Authentication is AWS Signature Version 4 in the Authorization header, checked for real
 * (sig-v4-header-based-auth.html, sig-v4-authenticating-requests.html): the canonical request is
 * rebuilt from the request as received (S3's canonical URI is the path encoded once, no double
 * encoding; the query decoded, re-encoded and sorted; the signed headers trimmed, lowercase,
 * sorted; the payload hash as sent in x-amz-content-sha256) and the signature compared in
 * constant time. An unknown access key is 403 InvalidAccessKeyId, a wrong signature 403
 * SignatureDoesNotMatch (with the StringToSign and CanonicalRequest, as S3 returns them), a wrong
 * region or credential date 400 AuthorizationHeaderMalformed, a clock more than 15 min off 403
 * RequestTimeTooSkewed. A hex payload hash must match the body (400 XAmzContentSHA256Mismatch),
 * a Content-MD5 too (400 BadDigest); DeleteObjects requires Content-MD5 (or an x-amz-checksum-*).
 * Bodies sent as `aws-chunked` (x-amz-content-sha256: STREAMING-…, sigv4-streaming.html) are
 * decoded; their per-chunk signatures are not verified. aws-sdk-go v1 itself never streams: it
 * signs PutObject and UploadPart with the body's hex SHA-256 and a Content-MD5.
 *
 * Simplified: one account, no versioning, ACLs, policies, presigned URLs, conditional requests,
 * copies, or checksums other than Content-MD5; ETags are MD5 hex (multipart: MD5 of the parts'
 * MD5s, "-N"); Last-Modified has S3's one-second precision.
 */

const NS = 'http://s3.amazonaws.com/doc/2006-03-01/';
const MAX_KEYS = 1000;
const MAX_DELETE_KEYS = 1000;
const MAX_PARTS = 10_000;
/** s3manager's and S3's minimum part size, for every part but the last. */
const MIN_PART_SIZE = 5 * 1024 * 1024;
const MAX_SKEW_MS = 15 * 60_000;
const OWNER_ID = 'f4ce53f4ce53f4ce53f4ce53f4ce53f4ce53f4ce53f4ce53f4ce53f4ce53f4ce';
const STREAMING = 'STREAMING-';
const UNSIGNED = 'UNSIGNED-PAYLOAD';

export interface FakeS3Options {
  accessKeyId?: string;
  secretAccessKey?: string;
  region?: string;
}

export interface S3RequestRecord {
  method: string;
  /** The S3 API operation (PutObject, ListObjects, …), or '' when the request was cut before routing. */
  op: string;
  bucket?: string;
  key?: string;
  query: Record<string, string>;
  /** 0: the connection was dropped (setUnavailable(true, 'drop')); one cut as it opened has method ''. */
  status: number;
  /** The S3 error code answered, if any. */
  code?: string;
  at: number;
}

export interface S3Failure {
  /** Only requests for this operation (e.g. 'PutObject'); default any. */
  op?: string;
  method?: string;
  status?: number;
  code?: string;
  message?: string;
  /** How many matching requests fail (default 1). */
  times?: number;
}

export interface FakeS3 {
  /** http://127.0.0.1:port */
  readonly endpoint: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region: string;
  /** Creates a bucket (no-op if it exists). */
  bucket(name: string): void;
  /** A copy of a bucket's objects, key → body. */
  objects(bucket: string): Map<string, Buffer>;
  /** The next matching request(s), once authenticated, answer this S3 error (default 500 InternalError). */
  failNext(failure?: S3Failure): void;
  /** On: every request is refused, by dropping its connection (default) or with 503 ServiceUnavailable. */
  setUnavailable(on: boolean, how?: 'drop' | '503'): void;
  /** Every request served, in order. */
  readonly requests: S3RequestRecord[];
  stop(): Promise<void>;
}

interface StoredObject {
  body: Buffer;
  etag: string;
  lastModified: Date;
  contentType: string;
  meta: Record<string, string>;
}

interface Upload {
  bucket: string;
  key: string;
  contentType: string;
  meta: Record<string, string>;
  parts: Map<number, { body: Buffer; etag: string }>;
}

interface Reply {
  status: number;
  headers?: Record<string, string>;
  body?: Buffer | string;
}

class S3Error extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Record<string, string> = {},
  ) {
    super(message);
  }
}

const noSuchBucket = (bucket: string): S3Error => new S3Error(404, 'NoSuchBucket', 'The specified bucket does not exist', { BucketName: bucket });
const malformedXml = (): S3Error =>
  new S3Error(400, 'MalformedXML', 'The XML you provided was not well-formed or did not validate against our published schema');
const notImplemented = (what: string): S3Error =>
  new S3Error(501, 'NotImplemented', `A header or query you provided implies functionality that is not implemented (${what})`);

// ---------------------------------------------------------------------------------------------
// Signature Version 4

/** S3's UriEncode: everything but A-Za-z0-9 - _ . ~ percent-encoded, uppercase hex. */
function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function decodeComponent(s: string, plusIsSpace: boolean): string {
  try {
    return decodeURIComponent(plusIsSpace ? s.replace(/\+/g, ' ') : s);
  } catch {
    throw new S3Error(400, 'InvalidURI', "Couldn't parse the specified URI.");
  }
}

function queryPairs(rawQuery: string): [string, string][] {
  return rawQuery
    .split('&')
    .filter((p) => p !== '')
    .map((p) => {
      const eq = p.indexOf('=');
      const [n, v] = eq < 0 ? [p, ''] : [p.slice(0, eq), p.slice(eq + 1)];
      return [decodeComponent(n, true), decodeComponent(v, true)];
    });
}

const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string): Buffer => createHmac('sha256', key).update(data).digest();

export interface SigV4Input {
  method: string;
  /** The path as sent, percent-encoded. */
  path: string;
  /** The query as sent, without '?'. */
  query: string;
  /** Lowercase header name → its values, in the order received. */
  headers: Record<string, string[]>;
  signedHeaders: string[];
  /** The x-amz-content-sha256 value. */
  payloadHash: string;
  /** x-amz-date, e.g. 20130524T000000Z. */
  amzDate: string;
  region: string;
  secretAccessKey: string;
}

/** The Signature Version 4 computation for an S3 request, as S3 redoes it to check one. */
export function sigV4(input: SigV4Input): { canonicalRequest: string; stringToSign: string; signature: string } {
  const uri = input.path.split('/').map((seg) => uriEncode(decodeComponent(seg, false))).join('/') || '/';
  const query = queryPairs(input.query)
    .map(([n, v]) => [uriEncode(n), uriEncode(v)] as const)
    .sort(([an, av], [bn, bv]) => (an < bn ? -1 : an > bn ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([n, v]) => `${n}=${v}`)
    .join('&');
  const headers = input.signedHeaders
    .map((h) => `${h}:${(input.headers[h] ?? []).map((v) => v.trim().replace(/\s+/g, ' ')).join(',')}\n`)
    .join('');
  const canonicalRequest = [input.method, uri, query, headers, input.signedHeaders.join(';'), input.payloadHash].join('\n');
  const date = input.amzDate.slice(0, 8);
  const scope = `${date}/${input.region}/s3/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', input.amzDate, scope, sha256(canonicalRequest)].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${input.secretAccessKey}`, date), input.region), 's3'), 'aws4_request');
  return { canonicalRequest, stringToSign, signature: hmac(key, stringToSign).toString('hex') };
}

/** Header name (lowercase) → values, from the raw header list (duplicates kept apart). */
function headerValues(raw: string[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (let i = 0; i + 1 < raw.length; i += 2) (out[raw[i]!.toLowerCase()] ??= []).push(raw[i + 1]!);
  return out;
}

function parseAmzDate(s: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  return m ? Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) : undefined;
}

/** The aws-chunked framing: `<hex size>[;chunk-signature=…]\r\n<data>\r\n`…, a 0-size chunk, optional trailers. */
function decodeAwsChunked(buf: Buffer): Buffer | undefined {
  const out: Buffer[] = [];
  let pos = 0;
  for (;;) {
    const eol = buf.indexOf('\r\n', pos);
    if (eol < 0) return undefined;
    const sizeText = buf.subarray(pos, eol).toString('latin1').split(';')[0]!.trim();
    if (!/^[0-9a-fA-F]+$/.test(sizeText)) return undefined;
    const size = parseInt(sizeText, 16);
    pos = eol + 2;
    if (size === 0) return Buffer.concat(out);
    if (pos + size + 2 > buf.length || buf.toString('latin1', pos + size, pos + size + 2) !== '\r\n') return undefined;
    out.push(buf.subarray(pos, pos + size));
    pos += size + 2;
  }
}

// ---------------------------------------------------------------------------------------------
// XML

const escapeXml = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);

function unescapeXml(s: string): string {
  return s.replace(/&(lt|gt|amp|quot|apos|#\d+|#x[0-9a-fA-F]+);/g, (_, e: string) => {
    if (e.startsWith('#x')) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (e.startsWith('#')) return String.fromCodePoint(parseInt(e.slice(1), 10));
    return { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" }[e]!;
  });
}

/** The inner text of each `<tag>…</tag>` (or `<tag/>`: '') in a request body; tags do not nest in the bodies S3 takes. */
function elements(xml: string, tag: string): string[] {
  const re = new RegExp(`<${tag}(?:\\s[^>]*)?(?:/>|>([\\s\\S]*?)</${tag}>)`, 'g');
  return [...xml.matchAll(re)].map((m) => m[1] ?? '');
}

const el = (tag: string, value: string | number | boolean): string => `<${tag}>${escapeXml(String(value))}</${tag}>`;
const xmlDoc = (root: string, inner: string): string => `<?xml version="1.0" encoding="UTF-8"?>\n<${root} xmlns="${NS}">${inner}</${root}>`;

// ---------------------------------------------------------------------------------------------
// Routing

const LIST_PARAMS = ['prefix', 'delimiter', 'marker', 'max-keys', 'encoding-type', 'list-type', 'continuation-token', 'start-after', 'fetch-owner'];

/** Refuses query parameters the operation does not take: a subresource we do not serve (?acl, ?tagging, …). */
function onlyParams(q: URLSearchParams, allowed: string[]): void {
  for (const name of q.keys()) if (!allowed.includes(name) && name !== 'x-id') throw notImplemented(`?${name}`);
}

function operation(method: string, bucket: string | undefined, key: string | undefined, q: URLSearchParams, h: http.IncomingHttpHeaders): string {
  const notAllowed = new S3Error(405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.', { Method: method });
  if (bucket === undefined) {
    if (method !== 'GET') throw notAllowed;
    onlyParams(q, []);
    return 'ListBuckets';
  }
  if (key === undefined) {
    switch (method) {
      case 'HEAD':
        return 'HeadBucket';
      case 'PUT':
        onlyParams(q, []);
        return 'CreateBucket';
      case 'DELETE':
        onlyParams(q, []);
        return 'DeleteBucket';
      case 'POST':
        onlyParams(q, ['delete']);
        if (q.has('delete')) return 'DeleteObjects';
        throw notAllowed;
      case 'GET':
        if (q.has('location')) return 'GetBucketLocation';
        onlyParams(q, LIST_PARAMS);
        return q.get('list-type') === '2' ? 'ListObjectsV2' : 'ListObjects';
    }
    throw notAllowed;
  }
  switch (method) {
    case 'PUT':
      if (h['x-amz-copy-source']) throw notImplemented('x-amz-copy-source');
      onlyParams(q, ['partNumber', 'uploadId']);
      if (q.has('partNumber') || q.has('uploadId')) return 'UploadPart';
      return 'PutObject';
    case 'GET':
      onlyParams(q, []);
      return 'GetObject';
    case 'HEAD':
      onlyParams(q, []);
      return 'HeadObject';
    case 'DELETE':
      onlyParams(q, ['uploadId']);
      return q.has('uploadId') ? 'AbortMultipartUpload' : 'DeleteObject';
    case 'POST':
      onlyParams(q, ['uploads', 'uploadId']);
      if (q.has('uploads')) return 'CreateMultipartUpload';
      if (q.has('uploadId')) return 'CompleteMultipartUpload';
  }
  throw notAllowed;
}

// ---------------------------------------------------------------------------------------------
// Listing

type Entry = { key: string; obj: StoredObject } | { prefix: string };
const entryName = (e: Entry): string => ('key' in e ? e.key : e.prefix);

/** Keys under `prefix`, in byte order, with those holding `delimiter` after the prefix rolled up into one CommonPrefix each. */
function listEntries(objects: Map<string, StoredObject>, prefix: string, delimiter: string): Entry[] {
  const keys = [...objects.keys()].filter((k) => k.startsWith(prefix)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const out: Entry[] = [];
  for (const key of keys) {
    const cut = delimiter ? key.indexOf(delimiter, prefix.length) : -1;
    if (cut < 0) {
      out.push({ key, obj: objects.get(key)! });
      continue;
    }
    const p = key.slice(0, cut + delimiter.length);
    const last = out[out.length - 1];
    if (!last || !('prefix' in last) || last.prefix !== p) out.push({ prefix: p });
  }
  return out;
}

/** Entries after `after` (a key or a rolled-up prefix already returned), at most `max`. */
function page(entries: Entry[], after: string, max: number): { items: Entry[]; truncated: boolean } {
  const rest = after ? entries.filter((e) => Buffer.compare(Buffer.from(entryName(e)), Buffer.from(after)) > 0) : entries;
  return { items: rest.slice(0, max), truncated: rest.length > max };
}

function maxKeysParam(q: URLSearchParams): number {
  const raw = q.get('max-keys');
  if (raw === null) return MAX_KEYS;
  if (!/^\d+$/.test(raw)) throw new S3Error(400, 'InvalidArgument', 'Provided max-keys not an integer or within integer range', { ArgumentName: 'max-keys', ArgumentValue: raw });
  return Math.min(Number(raw), MAX_KEYS);
}

/** encoding-type=url: the names in the answer URL-encoded ('/' kept), as the ListObjects pages describe. */
function nameEncoder(q: URLSearchParams): (s: string) => string {
  const type = q.get('encoding-type');
  if (type === null) return (s) => s;
  if (type !== 'url') throw new S3Error(400, 'InvalidArgument', 'Invalid Encoding Method specified in Request', { ArgumentName: 'encoding-type', ArgumentValue: type });
  return (s) => uriEncode(s).replace(/%2F/g, '/');
}

function contentsXml(e: { key: string; obj: StoredObject }, enc: (s: string) => string, owner: boolean): string {
  return (
    '<Contents>' +
    el('Key', enc(e.key)) +
    el('LastModified', e.obj.lastModified.toISOString()) +
    el('ETag', `"${e.obj.etag}"`) +
    el('Size', e.obj.body.length) +
    el('StorageClass', 'STANDARD') +
    (owner ? `<Owner>${el('ID', OWNER_ID)}${el('DisplayName', 'fake-s3')}</Owner>` : '') +
    '</Contents>'
  );
}

const prefixesXml = (items: Entry[], enc: (s: string) => string): string =>
  items.map((e) => ('prefix' in e ? `<CommonPrefixes>${el('Prefix', enc(e.prefix))}</CommonPrefixes>` : '')).join('');

// ---------------------------------------------------------------------------------------------


const md5 = (b: Buffer): Buffer => createHash('md5').update(b).digest();
const requestId = (): string => randomBytes(8).toString('hex').toUpperCase();

function userMeta(h: http.IncomingHttpHeaders): Record<string, string> {
  const meta: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) if (k.startsWith('x-amz-meta-') && typeof v === 'string') meta[k] = v;
  return meta;
}

function objectHeaders(o: StoredObject): Record<string, string> {
  return {
    ETag: `"${o.etag}"`,
    'Last-Modified': o.lastModified.toUTCString(),
    'Content-Type': o.contentType,
    'Accept-Ranges': 'bytes',
    ...o.meta,
  };
}

/** A single `bytes=a-b`, `bytes=a-` or `bytes=-n`; anything else is ignored (the whole object), as S3 does. */
function parseRange(header: string | undefined, size: number): { start: number; end: number } | undefined {
  const m = header ? /^bytes=(\d*)-(\d*)$/.exec(header.trim()) : null;
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  const [start, end] = m[1] === '' ? [Math.max(0, size - Number(m[2])), size - 1] : [Number(m[1]), m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)];
  if (start >= size || start > end || (m[1] === '' && Number(m[2]) === 0)) {
    throw new S3Error(416, 'InvalidRange', 'The requested range is not satisfiable', { RangeRequested: header!, ActualObjectSize: String(size) });
  }
  return { start, end };
}

class Server implements FakeS3 {
  readonly requests: S3RequestRecord[] = [];
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region: string;
  endpoint = '';
  private readonly http: http.Server;
  private readonly sockets = new Set<Socket>();
  private readonly buckets = new Map<string, Map<string, StoredObject>>();
  private readonly uploads = new Map<string, Upload>();
  private readonly failures: (S3Failure & { times: number })[] = [];
  private unavailable: 'drop' | '503' | undefined;

  constructor(opts: FakeS3Options) {
    this.accessKeyId = opts.accessKeyId ?? 'AKIAFAKES3EXAMPLE000';
    this.secretAccessKey = opts.secretAccessKey ?? 'fake-s3-secret-access-key-0123456789abcd';
    this.region = opts.region ?? 'us-east-1';
    this.http = http.createServer((req, res) => void this.handle(req, res));
    this.http.on('connection', (s: Socket) => {
      if (this.unavailable === 'drop') {
        this.requests.push({ method: '', op: '', query: {}, status: 0, at: Date.now() });
        s.destroy();
        return;
      }
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(0, '127.0.0.1', () => resolve());
    });
    this.endpoint = `http://127.0.0.1:${(this.http.address() as AddressInfo).port}`;
  }

  bucket(name: string): void {
    if (!this.buckets.has(name)) this.buckets.set(name, new Map());
  }

  objects(bucket: string): Map<string, Buffer> {
    const b = this.buckets.get(bucket);
    if (!b) throw new Error(`fake S3: no bucket ${bucket}`);
    return new Map([...b].map(([k, o]) => [k, Buffer.from(o.body)]));
  }

  failNext(failure: S3Failure = {}): void {
    this.failures.push({ ...failure, times: failure.times ?? 1 });
  }

  setUnavailable(on: boolean, how: 'drop' | '503' = 'drop'): void {
    this.unavailable = on ? how : undefined;
    if (on && how === 'drop') for (const s of this.sockets) s.destroy();
  }

  async stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.http.close(() => resolve()));
    this.http.closeAllConnections();
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const qAt = url.indexOf('?');
    const rawPath = qAt < 0 ? url : url.slice(0, qAt);
    const rawQuery = qAt < 0 ? '' : url.slice(qAt + 1);
    const record: S3RequestRecord = { method, op: '', query: {}, status: 0, at: Date.now() };
    this.requests.push(record);
    if (this.unavailable === 'drop') {
      req.socket.destroy();
      return;
    }
    let reply: Reply;
    try {
      const body = await buffer(req);
      const q = new URLSearchParams(queryPairs(rawQuery));
      record.query = Object.fromEntries(q);
      const [bucket, key] = this.target(rawPath);
      record.bucket = bucket;
      record.key = key;
      record.op = operation(method, bucket, key, q, req.headers);
      if (this.unavailable === '503') throw new S3Error(503, 'ServiceUnavailable', 'Service is unable to handle request.');
      const payload = this.authenticate(req, rawPath, rawQuery, body);
      this.injectedFailure(record.op, method);
      reply = this.execute(record.op, req, bucket, key, q, payload);
    } catch (e) {
      const err = e instanceof S3Error ? e : new S3Error(500, 'InternalError', `We encountered an internal error. Please try again. (${String(e)})`);
      record.code = err.code;
      reply = this.errorReply(err, method === 'HEAD');
    }
    record.status = reply.status;
    if (res.destroyed) return;
    const id = requestId();
    const body = reply.body === undefined ? undefined : Buffer.from(reply.body);
    res.writeHead(reply.status, {
      'x-amz-request-id': id,
      'x-amz-id-2': Buffer.from(id).toString('base64'),
      Server: 'FakeS3',
      ...(body && !reply.headers?.['Content-Type'] ? { 'Content-Type': 'application/xml' } : {}),
      ...(body ? { 'Content-Length': String(body.length) } : {}),
      ...reply.headers,
    });
    res.end(method === 'HEAD' ? undefined : body);
  }

  /** Path style: /bucket/key. A trailing '/' alone after the bucket names the bucket. */
  private target(rawPath: string): [string | undefined, string | undefined] {
    if (rawPath === '/' || rawPath === '') return [undefined, undefined];
    const slash = rawPath.indexOf('/', 1);
    const bucket = decodeComponent(slash < 0 ? rawPath.slice(1) : rawPath.slice(1, slash), false);
    const key = slash < 0 || slash === rawPath.length - 1 ? undefined : decodeComponent(rawPath.slice(slash + 1), false);
    return [bucket, key];
  }

  private errorReply(err: S3Error, head: boolean): Reply {
    if (head) return { status: err.status };
    const extra = Object.entries(err.extra)
      .map(([k, v]) => el(k, v))
      .join('');
    const id = requestId();
    return {
      status: err.status,
      body: `<?xml version="1.0" encoding="UTF-8"?>\n<Error>${el('Code', err.code)}${el('Message', err.message)}${extra}${el('RequestId', id)}${el('HostId', Buffer.from(id).toString('base64'))}</Error>`,
    };
  }

  private injectedFailure(op: string, method: string): void {
    const i = this.failures.findIndex((f) => (!f.op || f.op === op) && (!f.method || f.method === method));
    if (i < 0) return;
    const f = this.failures[i]!;
    if (--f.times <= 0) this.failures.splice(i, 1);
    throw new S3Error(f.status ?? 500, f.code ?? 'InternalError', f.message ?? 'We encountered an internal error. Please try again.');
  }

  /** Checks the request's SigV4 signature and payload hash; returns the payload (aws-chunked decoded). */
  private authenticate(req: http.IncomingMessage, rawPath: string, rawQuery: string, body: Buffer): Buffer {
    const auth = req.headers.authorization;
    if (!auth) {
      if (/(^|&)X-Amz-Signature=/.test(rawQuery)) throw notImplemented('presigned URLs');
      throw new S3Error(403, 'AccessDenied', 'Access Denied');
    }
    if (!auth.startsWith('AWS4-HMAC-SHA256 ')) {
      throw new S3Error(400, 'InvalidRequest', 'The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.');
    }
    const fields = new Map(
      auth
        .slice('AWS4-HMAC-SHA256 '.length)
        .split(',')
        .map((p) => p.trim())
        .map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)] as const),
    );
    const credential = fields.get('Credential')?.split('/');
    const signedHeaders = fields.get('SignedHeaders')?.split(';');
    const provided = fields.get('Signature');
    const malformed = (why: string, extra: Record<string, string> = {}): S3Error =>
      new S3Error(400, 'AuthorizationHeaderMalformed', `The authorization header is malformed; ${why}`, extra);
    if (!credential || credential.length !== 5 || !signedHeaders || !provided) throw malformed('it needs Credential, SignedHeaders and Signature.');
    const [accessKeyId, date, region, service, terminator] = credential as [string, string, string, string, string];
    if (accessKeyId !== this.accessKeyId) {
      throw new S3Error(403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.', { AWSAccessKeyId: accessKeyId });
    }
    const amzDate = typeof req.headers['x-amz-date'] === 'string' ? req.headers['x-amz-date'] : '';
    const at = parseAmzDate(amzDate);
    if (at === undefined) throw new S3Error(403, 'AccessDenied', 'AWS authentication requires a valid Date or x-amz-date header');
    if (date !== amzDate.slice(0, 8)) throw malformed('Invalid credential date. Date is not the same as X-Amz-Date.');
    if (region !== this.region) throw malformed(`the region '${region}' is wrong; expecting '${this.region}'`, { Region: this.region });
    if (service !== 's3' || terminator !== 'aws4_request') throw malformed(`incorrect service '${service}' or terminal '${terminator}'.`);
    if (!signedHeaders.includes('host')) throw malformed('SignedHeaders must include host.');
    if (Math.abs(Date.now() - at) > MAX_SKEW_MS) {
      throw new S3Error(403, 'RequestTimeTooSkewed', "The difference between the request time and the server's time is too large.", {
        RequestTime: amzDate,
        ServerTime: new Date().toISOString(),
        MaxAllowedSkewMilliseconds: String(MAX_SKEW_MS),
      });
    }
    const payloadHash = req.headers['x-amz-content-sha256'];
    if (typeof payloadHash !== 'string') throw new S3Error(400, 'InvalidRequest', 'Missing required header for this request: x-amz-content-sha256');

    const sig = sigV4({
      method: req.method ?? 'GET',
      path: rawPath,
      query: rawQuery,
      headers: headerValues(req.rawHeaders),
      signedHeaders,
      payloadHash,
      amzDate,
      region,
      secretAccessKey: this.secretAccessKey,
    });
    const a = Buffer.from(sig.signature);
    const b = Buffer.from(provided);
    if (a.length !== b.length || !timingSafeEqual(a, b)) {
      throw new S3Error(
        403,
        'SignatureDoesNotMatch',
        'The request signature we calculated does not match the signature you provided. Check your key and signing method.',
        { AWSAccessKeyId: accessKeyId, StringToSign: sig.stringToSign, SignatureProvided: provided, CanonicalRequest: sig.canonicalRequest },
      );
    }

    let payload = body;
    if (/^[0-9a-f]{64}$/.test(payloadHash)) {
      const computed = sha256(body);
      if (computed !== payloadHash) {
        throw new S3Error(400, 'XAmzContentSHA256Mismatch', "The provided 'x-amz-content-sha256' header does not match what was computed.", {
          ClientComputedContentSHA256: payloadHash,
          S3ComputedContentSHA256: computed,
        });
      }
    } else if (payloadHash.startsWith(STREAMING)) {
      const decoded = decodeAwsChunked(body);
      if (!decoded) throw new S3Error(400, 'IncompleteBody', 'The request body is not valid aws-chunked encoding.');
      const declared = req.headers['x-amz-decoded-content-length'];
      if (declared !== undefined && Number(declared) !== decoded.length) {
        throw new S3Error(400, 'IncompleteBody', 'You did not provide the number of bytes specified by the x-amz-decoded-content-length header.');
      }
      payload = decoded;
    } else if (payloadHash !== UNSIGNED) {
      throw new S3Error(400, 'InvalidArgument', 'x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-…, or a valid sha256 value.', {
        ArgumentName: 'x-amz-content-sha256',
        ArgumentValue: payloadHash,
      });
    }
    const contentMd5 = req.headers['content-md5'];
    if (typeof contentMd5 === 'string') {
      const want = Buffer.from(contentMd5, 'base64');
      if (want.length !== 16 || want.toString('base64') !== contentMd5) throw new S3Error(400, 'InvalidDigest', 'The Content-MD5 you specified was invalid.');
      if (!want.equals(md5(payload))) throw new S3Error(400, 'BadDigest', 'The Content-MD5 you specified did not match what we received.');
    }
    return payload;
  }

  private store(bucket: string): Map<string, StoredObject> {
    const b = this.buckets.get(bucket);
    if (!b) throw noSuchBucket(bucket);
    return b;
  }

  private execute(op: string, req: http.IncomingMessage, bucket: string | undefined, key: string | undefined, q: URLSearchParams, payload: Buffer): Reply {
    const h = req.headers;
    const b = bucket ?? '';
    const k = key ?? '';
    switch (op) {
      case 'ListBuckets': {
        const list = [...this.buckets.keys()].sort().map((n) => `<Bucket>${el('Name', n)}${el('CreationDate', new Date(0).toISOString())}</Bucket>`);
        return { status: 200, body: xmlDoc('ListAllMyBucketsResult', `<Buckets>${list.join('')}</Buckets><Owner>${el('ID', OWNER_ID)}${el('DisplayName', 'fake-s3')}</Owner>`) };
      }
      case 'HeadBucket':
        this.store(b);
        return { status: 200, headers: { 'x-amz-bucket-region': this.region } };
      case 'CreateBucket':
        if (this.buckets.has(b)) throw new S3Error(409, 'BucketAlreadyOwnedByYou', 'Your previous request to create the named bucket succeeded and you already own it.', { BucketName: b });
        this.bucket(b);
        return { status: 200, headers: { Location: `/${b}` } };
      case 'DeleteBucket':
        if (this.store(b).size > 0) throw new S3Error(409, 'BucketNotEmpty', 'The bucket you tried to delete is not empty', { BucketName: b });
        this.buckets.delete(b);
        return { status: 204 };
      case 'GetBucketLocation':
        this.store(b);
        // us-east-1 is the empty LocationConstraint (API_GetBucketLocation).
        return { status: 200, body: xmlDoc('LocationConstraint', this.region === 'us-east-1' ? '' : escapeXml(this.region)) };
      case 'ListObjects':
        return this.listV1(this.store(b), b, q);
      case 'ListObjectsV2':
        return this.listV2(this.store(b), b, q);
      case 'DeleteObjects':
        return this.deleteObjects(this.store(b), h, payload);
      case 'PutObject': {
        const objects = this.store(b);
        const obj = this.newObject(payload, h);
        objects.set(k, obj);
        return { status: 200, headers: { ETag: `"${obj.etag}"` } };
      }
      case 'GetObject':
      case 'HeadObject': {
        const obj = this.store(b).get(k);
        if (!obj) throw new S3Error(404, 'NoSuchKey', 'The specified key does not exist.', { Key: k });
        const range = op === 'GetObject' ? parseRange(typeof h.range === 'string' ? h.range : undefined, obj.body.length) : undefined;
        if (!range) return { status: 200, headers: { ...objectHeaders(obj), 'Content-Length': String(obj.body.length) }, body: op === 'GetObject' ? obj.body : undefined };
        return {
          status: 206,
          headers: { ...objectHeaders(obj), 'Content-Range': `bytes ${range.start}-${range.end}/${obj.body.length}` },
          body: obj.body.subarray(range.start, range.end + 1),
        };
      }
      case 'DeleteObject':
        this.store(b).delete(k);
        return { status: 204 };
      case 'CreateMultipartUpload': {
        this.store(b);
        const uploadId = randomBytes(24).toString('base64url');
        this.uploads.set(uploadId, { bucket: b, key: k, contentType: h['content-type'] ?? 'binary/octet-stream', meta: userMeta(h), parts: new Map() });
        return { status: 200, body: xmlDoc('InitiateMultipartUploadResult', el('Bucket', b) + el('Key', k) + el('UploadId', uploadId)) };
      }
      case 'UploadPart': {
        const upload = this.upload(b, k, q);
        const n = q.get('partNumber') ?? '';
        if (!/^\d+$/.test(n) || Number(n) < 1 || Number(n) > MAX_PARTS) {
          throw new S3Error(400, 'InvalidArgument', `Part number must be an integer between 1 and ${MAX_PARTS}, inclusive`, { ArgumentName: 'partNumber', ArgumentValue: n });
        }
        const etag = md5(payload).toString('hex');
        upload.parts.set(Number(n), { body: payload, etag });
        return { status: 200, headers: { ETag: `"${etag}"` } };
      }
      case 'CompleteMultipartUpload':
        return this.complete(this.store(b), b, k, q, payload);
      case 'AbortMultipartUpload':
        this.upload(b, k, q);
        this.uploads.delete(q.get('uploadId')!);
        return { status: 204 };
    }
    throw notImplemented(op);
  }

  private newObject(body: Buffer, h: http.IncomingHttpHeaders, etag = md5(body).toString('hex')): StoredObject {
    return {
      body,
      etag,
      lastModified: new Date(Math.floor(Date.now() / 1000) * 1000),
      contentType: h['content-type'] ?? 'binary/octet-stream',
      meta: userMeta(h),
    };
  }

  private upload(bucket: string, key: string, q: URLSearchParams): Upload {
    this.store(bucket);
    const id = q.get('uploadId') ?? '';
    const upload = this.uploads.get(id);
    if (!upload || upload.bucket !== bucket || upload.key !== key) {
      throw new S3Error(404, 'NoSuchUpload', 'The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.', { UploadId: id });
    }
    return upload;
  }

  private complete(objects: Map<string, StoredObject>, bucket: string, key: string, q: URLSearchParams, payload: Buffer): Reply {
    const upload = this.upload(bucket, key, q);
    const xml = payload.toString('utf8');
    if (!/<CompleteMultipartUpload[\s>]/.test(xml)) throw malformedXml();
    const listed = elements(xml, 'Part').map((p) => ({
      n: Number(unescapeXml(elements(p, 'PartNumber')[0] ?? '')),
      etag: unescapeXml(elements(p, 'ETag')[0] ?? '').replace(/"/g, ''),
    }));
    if (listed.length === 0 || listed.some((p) => !Number.isInteger(p.n))) throw malformedXml();
    if (listed.some((p, i) => i > 0 && p.n <= listed[i - 1]!.n)) {
      throw new S3Error(400, 'InvalidPartOrder', 'The list of parts was not in ascending order. The parts list must be specified in order by part number.', { UploadId: q.get('uploadId')! });
    }
    const parts = listed.map((p) => {
      const part = upload.parts.get(p.n);
      if (!part || part.etag !== p.etag) {
        throw new S3Error(400, 'InvalidPart', "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.", {
          UploadId: q.get('uploadId')!,
          PartNumber: String(p.n),
          ETag: p.etag,
        });
      }
      return part;
    });
    parts.forEach((p, i) => {
      if (i < parts.length - 1 && p.body.length < MIN_PART_SIZE) {
        throw new S3Error(400, 'EntityTooSmall', 'Your proposed upload is smaller than the minimum allowed object size.', {
          ProposedSize: String(p.body.length),
          MinSizeAllowed: String(MIN_PART_SIZE),
          PartNumber: String(listed[i]!.n),
        });
      }
    });
    const etag = `${md5(Buffer.concat(parts.map((p) => Buffer.from(p.etag, 'hex')))).toString('hex')}-${parts.length}`;
    const obj = this.newObject(Buffer.concat(parts.map((p) => p.body)), { 'content-type': upload.contentType, ...upload.meta }, etag);
    objects.set(key, obj);
    this.uploads.delete(q.get('uploadId')!);
    const location = `${this.endpoint}/${bucket}/${key.split('/').map(uriEncode).join('/')}`;
    return { status: 200, body: xmlDoc('CompleteMultipartUploadResult', el('Location', location) + el('Bucket', bucket) + el('Key', key) + el('ETag', `"${etag}"`)) };
  }

  private deleteObjects(objects: Map<string, StoredObject>, h: http.IncomingHttpHeaders, payload: Buffer): Reply {
    if (!h['content-md5'] && !Object.keys(h).some((k) => k.startsWith('x-amz-checksum-'))) {
      throw new S3Error(400, 'InvalidRequest', 'Missing required header for this request: Content-MD5');
    }
    const xml = payload.toString('utf8');
    if (!/<Delete[\s>]/.test(xml)) throw malformedXml();
    const keys = elements(xml, 'Object').map((o) => elements(o, 'Key')[0]);
    if (keys.length === 0 || keys.length > MAX_DELETE_KEYS || keys.some((key) => key === undefined)) throw malformedXml();
    const quiet = unescapeXml(elements(xml, 'Quiet')[0] ?? 'false').trim() === 'true';
    let deleted = '';
    for (const raw of keys) {
      const key = unescapeXml(raw!);
      objects.delete(key);
      if (!quiet) deleted += `<Deleted>${el('Key', key)}</Deleted>`;
    }
    return { status: 200, body: xmlDoc('DeleteResult', deleted) };
  }

  private listV1(objects: Map<string, StoredObject>, bucket: string, q: URLSearchParams): Reply {
    const prefix = q.get('prefix') ?? '';
    const delimiter = q.get('delimiter') ?? '';
    const marker = q.get('marker') ?? '';
    const max = maxKeysParam(q);
    const enc = nameEncoder(q);
    const { items, truncated } = page(listEntries(objects, prefix, delimiter), marker, max);
    const last = items[items.length - 1];
    const inner =
      el('IsTruncated', truncated) +
      (q.has('marker') ? el('Marker', enc(marker)) : '') +
      (truncated && delimiter && last ? el('NextMarker', enc(entryName(last))) : '') +
      items.map((e) => ('key' in e ? contentsXml(e, enc, true) : '')).join('') +
      el('Name', bucket) +
      el('Prefix', enc(prefix)) +
      (delimiter ? el('Delimiter', enc(delimiter)) : '') +
      el('MaxKeys', max) +
      prefixesXml(items, enc) +
      (q.has('encoding-type') ? el('EncodingType', 'url') : '');
    return { status: 200, body: xmlDoc('ListBucketResult', inner) };
  }

  private listV2(objects: Map<string, StoredObject>, bucket: string, q: URLSearchParams): Reply {
    const prefix = q.get('prefix') ?? '';
    const delimiter = q.get('delimiter') ?? '';
    const token = q.get('continuation-token');
    const startAfter = q.get('start-after') ?? '';
    const max = maxKeysParam(q);
    const enc = nameEncoder(q);
    let after = startAfter;
    if (token !== null) {
      after = Buffer.from(token, 'base64url').toString('utf8');
      if (token === '' || Buffer.from(after).toString('base64url') !== token) {
        throw new S3Error(400, 'InvalidArgument', 'The continuation token provided is incorrect', { ArgumentName: 'continuation-token' });
      }
    }
    const { items, truncated } = page(listEntries(objects, prefix, delimiter), after, max);
    const last = items[items.length - 1];
    const inner =
      el('IsTruncated', truncated) +
      items.map((e) => ('key' in e ? contentsXml(e, enc, q.get('fetch-owner') === 'true') : '')).join('') +
      el('Name', bucket) +
      el('Prefix', enc(prefix)) +
      (delimiter ? el('Delimiter', enc(delimiter)) : '') +
      el('MaxKeys', max) +
      prefixesXml(items, enc) +
      (q.has('encoding-type') ? el('EncodingType', 'url') : '') +
      el('KeyCount', items.length) +
      (token !== null ? el('ContinuationToken', token) : '') +
      (truncated && last ? el('NextContinuationToken', Buffer.from(entryName(last)).toString('base64url')) : '') +
      (q.has('start-after') ? el('StartAfter', enc(startAfter)) : '');
    return { status: 200, body: xmlDoc('ListBucketResult', inner) };
  }
}

/** Starts the fake on an ephemeral port of 127.0.0.1. */
export async function startFakeS3(opts: FakeS3Options = {}): Promise<FakeS3> {
  const s = new Server(opts);
  await s.listen();
  return s;
}
