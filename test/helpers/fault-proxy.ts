import net from 'node:net';

/**
 * A TCP proxy on 127.0.0.1:0 for fault tests: it sits between a replica and its master and
 * understands just enough HTTP/1.1 (request/response framing, content-length and chunked
 * bodies, keep-alive reuse) to aim a fault at one kind of response, such as the replication
 * stream or the snapshot, and at an exact byte of its payload (the body after the HTTP headers,
 * with any chunked framing removed).
 *
 * Faults, set (and replaced or cleared) at any time with `proxy.fault = ...`; each response is
 * checked against the fault in force when its headers arrive (a `flipRecord` fault is checked
 * live, record by record, so it also reaches a stream that is already open):
 * - `cut`: close the connection after N bytes of a matching response, counted from the first
 *   byte of its status line (`counting: 'raw'`) or of its payload (`counting: 'payload'`).
 *   Exactly those N bytes reach the client, then a FIN; the master side is destroyed.
 * - `flip`: XOR one payload byte (at `payloadOffset`) of every matching response with `mask`.
 * - `flipRecord`: in a matching response carrying replication records
 *   (`u32 length | u8 type | body | u32 check`: a crc32 of the body, or for transactions of its page hashes), XOR the byte at `offsetInRecord` (0 = first
 *   byte of the length prefix, 4 = the type) of the next record of `recordType`. `times` caps
 *   how many records in all are damaged (default 1). Bytes of a record's first 5 are held back
 *   until its type is known, so the length prefix can be damaged too.
 * - `refuse`: close a connection as soon as a matching request line arrives, forwarding nothing.
 * `proxy.cutAll(match)` closes open connections on demand.
 *
 * Without a fault the proxy passes every byte through unchanged.
 */

export interface ResponseInfo {
  /** The request line this response answers, e.g. `GET /internal/v1/replication/snapshot HTTP/1.1`. */
  requestLine: string;
  status: number;
  contentLength: number | undefined;
  chunked: boolean;
  /** How many earlier responses matched this fault (0 for the first). */
  index: number;
}

export type Fault =
  | { kind: 'cut'; match?: RegExp; afterBytes: number | ((r: ResponseInfo) => number); counting?: 'raw' | 'payload' }
  | { kind: 'flip'; match?: RegExp; payloadOffset: number | ((r: ResponseInfo) => number); mask?: number }
  | { kind: 'flipRecord'; match?: RegExp; recordType: number; offsetInRecord: number; mask?: number; times?: number }
  | { kind: 'refuse'; match?: RegExp };

export interface ProxyEvent {
  kind: 'request' | 'response' | 'cut' | 'flip' | 'refuse';
  requestLine: string;
  at: number;
  /** For cut: bytes delivered of the response (raw); for flip: payload offset; for response: status. */
  detail?: number;
  /** For flipRecord: the record's length and type as sent by the master. */
  record?: { length: number; type: number };
}

export interface FaultProxy {
  url: string;
  port: number;
  fault: Fault | undefined;
  readonly events: ProxyEvent[];
  /** Events of a kind, optionally only those whose request line matches. */
  count(kind: ProxyEvent['kind'], match?: RegExp): number;
  /** Closes open connections whose latest request line matches (all without `match`); returns how many. */
  cutAll(match?: RegExp): number;
  close(): Promise<void>;
}

type BodyMode = 'none' | 'length' | 'chunked' | 'close';

interface ParserHandlers {
  /** Headers of a message complete; returns how its body is framed and its length. */
  onHead(head: string, startRaw: number): { mode: BodyMode; length?: number };
  /** Payload bytes buf[start, end) whose first is at `payloadOffset` in the message and `raw` in the stream. */
  onPayload(buf: Buffer, start: number, end: number, payloadOffset: number, raw: number): void;
  /** The message ended just before stream offset `endRaw`. */
  onEnd(endRaw: number): void;
}

const CRLF2 = '\r\n\r\n';

/** A streaming HTTP/1.1 framer for one direction of a connection. */
class HttpFramer {
  /** Stream offset of the next byte to be fed. */
  raw = 0;
  private state: 'head' | 'length' | 'size' | 'data' | 'data-crlf' | 'trailer' | 'close' = 'head';
  private head = '';
  private headStart = 0;
  private line = '';
  private left = 0;
  private payload = 0;

  constructor(private readonly h: ParserHandlers) {}

  feed(buf: Buffer): void {
    let i = 0;
    while (i < buf.length) {
      const raw = this.raw + i;
      switch (this.state) {
        case 'head': {
          if (this.head.length === 0) this.headStart = raw;
          const prev = this.head.length;
          const take = Math.min(buf.length - i, 65536);
          this.head += buf.toString('latin1', i, i + take);
          const at = this.head.indexOf(CRLF2, Math.max(0, prev - 3));
          if (at < 0) {
            if (this.head.length > 1 << 20) throw new Error('fault proxy: HTTP head over 1 MiB');
            i += take;
            break;
          }
          i += at + 4 - prev;
          const head = this.head.slice(0, at);
          this.head = '';
          this.payload = 0;
          const { mode, length } = this.h.onHead(head, this.headStart);
          if (mode === 'none' || (mode === 'length' && !length)) this.end(this.raw + i);
          else if (mode === 'length') {
            this.state = 'length';
            this.left = length!;
          } else if (mode === 'chunked') {
            this.state = 'size';
            this.line = '';
          } else this.state = 'close';
          break;
        }
        case 'length':
        case 'data':
        case 'close': {
          const n = this.state === 'close' ? buf.length - i : Math.min(this.left, buf.length - i);
          this.h.onPayload(buf, i, i + n, this.payload, raw);
          this.payload += n;
          i += n;
          if (this.state === 'close') break;
          this.left -= n;
          if (this.left === 0) {
            if (this.state === 'length') this.end(this.raw + i);
            else {
              this.state = 'data-crlf';
              this.left = 2;
            }
          }
          break;
        }
        case 'data-crlf': {
          const n = Math.min(this.left, buf.length - i);
          i += n;
          this.left -= n;
          if (this.left === 0) {
            this.state = 'size';
            this.line = '';
          }
          break;
        }
        case 'size':
        case 'trailer': {
          const c = buf[i++]!;
          if (c !== 0x0a) {
            this.line += String.fromCharCode(c);
            break;
          }
          const line = this.line.replace(/\r$/, '');
          this.line = '';
          if (this.state === 'trailer') {
            if (line === '') this.end(this.raw + i);
            break;
          }
          const size = parseInt(line.split(';')[0]!.trim(), 16);
          if (!Number.isFinite(size)) throw new Error(`fault proxy: bad chunk size line ${JSON.stringify(line)}`);
          if (size === 0) this.state = 'trailer';
          else {
            this.state = 'data';
            this.left = size;
          }
          break;
        }
      }
    }
    this.raw += buf.length;
  }

  private end(endRaw: number): void {
    this.state = 'head';
    this.head = '';
    this.h.onEnd(endRaw);
  }
}

function headerValue(head: string, name: string): string | undefined {
  const re = new RegExp(`^${name}:[ \\t]*(.*)$`, 'im');
  return re.exec(head)?.[1]?.trim();
}

/** Starts a proxy in front of `target` (a URL like `http://127.0.0.1:1234`). */
export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const t = new URL(target);
  const targetHost = t.hostname;
  const targetPort = Number(t.port || 80);
  const events: ProxyEvent[] = [];
  const conns = new Set<{ latest: string; kill(): void }>();
  const matchCounts = new WeakMap<Fault, number>();
  const flipsDone = new WeakMap<Fault, number>();

  const proxy: FaultProxy = {
    url: '',
    port: 0,
    fault: undefined,
    events,
    count: (kind, match) => events.filter((e) => e.kind === kind && (!match || match.test(e.requestLine))).length,
    cutAll(match) {
      let n = 0;
      for (const c of [...conns]) {
        if (match && !match.test(c.latest)) continue;
        events.push({ kind: 'cut', requestLine: c.latest, at: Date.now() });
        c.kill();
        n++;
      }
      return n;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of [...conns]) c.kill();
        server.close(() => resolve());
      }),
  };

  const matches = (f: Fault | undefined, line: string): boolean => !!f && (!f.match || f.match.test(line));

  const server = net.createServer((client) => {
    client.setNoDelay(true);
    const upstream = net.connect({ host: targetHost, port: targetPort });
    upstream.setNoDelay(true);
    let dead = false;
    const conn = {
      latest: '',
      kill() {
        if (dead) return;
        dead = true;
        conns.delete(conn);
        client.destroy();
        upstream.destroy();
      },
    };
    conns.add(conn);
    client.on('error', () => conn.kill());
    upstream.on('error', () => conn.kill());
    client.on('close', () => conn.kill());
    client.on('end', () => upstream.end());

    // Client -> master: note request lines (to pair with responses) and apply `refuse`.
    const requests: string[] = [];
    const reqFramer = new HttpFramer({
      onHead(head) {
        const line = head.split('\r\n', 1)[0]!;
        requests.push(line);
        conn.latest = line;
        events.push({ kind: 'request', requestLine: line, at: Date.now() });
        if (proxy.fault?.kind === 'refuse' && matches(proxy.fault, line)) {
          events.push({ kind: 'refuse', requestLine: line, at: Date.now() });
          refused = true;
        }
        const chunked = /chunked/i.test(headerValue(head, 'transfer-encoding') ?? '');
        const cl = headerValue(head, 'content-length');
        return chunked ? { mode: 'chunked' } : cl ? { mode: 'length', length: Number(cl) } : { mode: 'none' };
      },
      onPayload() {},
      onEnd() {},
    });
    let refused = false;
    client.on('data', (chunk: Buffer) => {
      if (dead) return;
      try {
        reqFramer.feed(chunk);
      } catch {
        // Not HTTP we understand: pass it on untouched.
      }
      if (refused) {
        conn.kill();
        return;
      }
      upstream.write(chunk);
    });

    // Master -> client: the faults. Bytes wait in `out` until the framer has seen them, so a
    // byte can be changed before it leaves, and a cut lands on an exact offset.
    let out: Buffer = Buffer.alloc(0);
    let outRaw = 0; // stream offset of out[0]
    let cutAtRaw = Infinity;
    let holdFromRaw = Infinity;
    let respStartRaw = 0;
    let cur: { info: ResponseInfo; fault: Fault | undefined; flipAtPayload: number | undefined; cutAtPayload: number | undefined } | undefined;
    // Record framing of the current response, in payload offsets, for flipRecord.
    interface RecState {
      start: number;
      prefixRaw: number[];
      prefix: number[];
      held: boolean;
      length: number;
      target: number;
    }
    const freshRecord = (start: number): RecState => ({ start, prefixRaw: [], prefix: [], held: false, length: -1, target: -1 });
    let rec = freshRecord(0);
    const mutate = (raw: number, mask: number): void => {
      const i = raw - outRaw;
      if (i < 0 || i >= out.length) throw new Error(`fault proxy: byte ${raw} already sent`);
      out[i] = out[i]! ^ mask;
    };

    const flushOut = (): void => {
      if (dead) return;
      const upTo = Math.min(cutAtRaw, holdFromRaw, outRaw + out.length);
      const n = upTo - outRaw;
      let piece: Buffer | undefined;
      if (n > 0) {
        piece = out.subarray(0, n);
        out = out.subarray(n);
        outRaw += n;
      }
      if (outRaw >= cutAtRaw) {
        events.push({ kind: 'cut', requestLine: cur?.info.requestLine ?? conn.latest, at: Date.now(), detail: outRaw - respStartRaw });
        dead = true;
        conns.delete(conn);
        upstream.destroy();
        if (piece) client.end(piece);
        else client.end();
        return;
      }
      if (piece) client.write(piece);
    };
    upstream.on('close', () => {
      // Deliver what is held back, then close the client's side too.
      holdFromRaw = Infinity;
      flushOut();
      if (!dead) client.end();
      conns.delete(conn);
    });

    /** Walks record boundaries; touches each record's 5-byte prefix only, then skips its body. */
    const trackRecords = (n: number, payloadOffset: number, raw: number, f: Extract<Fault, { kind: 'flipRecord' }> | undefined): void => {
      const armed = (): boolean => !!f && (flipsDone.get(f) ?? 0) < (f.times ?? 1);
      const endO = payloadOffset + n;
      let o = payloadOffset;
      while (o < endO) {
        const r = raw + (o - payloadOffset);
        const inRec = o - rec.start;
        if (inRec < 5) {
          if (inRec === 0 && armed()) {
            rec.held = true;
            holdFromRaw = Math.min(holdFromRaw, r);
          }
          rec.prefixRaw.push(r);
          rec.prefix.push(out[r - outRaw]!);
          if (inRec === 4) {
            rec.length = Buffer.from(rec.prefix.slice(0, 4)).readUInt32BE(0);
            const type = rec.prefix[4]!;
            if (f && armed() && type === f.recordType && f.offsetInRecord < rec.length + 8 && (rec.held || f.offsetInRecord > 4)) {
              flipsDone.set(f, (flipsDone.get(f) ?? 0) + 1);
              events.push({ kind: 'flip', requestLine: cur!.info.requestLine, at: Date.now(), detail: rec.start + f.offsetInRecord, record: { length: rec.length, type } });
              if (f.offsetInRecord <= 4) mutate(rec.prefixRaw[f.offsetInRecord]!, f.mask ?? 0xff);
              else rec.target = rec.start + f.offsetInRecord;
            }
            holdFromRaw = Infinity;
          }
          o++;
          continue;
        }
        const recEnd = rec.start + rec.length + 8;
        if (rec.target >= o && rec.target < endO) {
          mutate(raw + (rec.target - payloadOffset), f?.mask ?? 0xff);
          rec.target = -1;
        }
        o = Math.min(endO, recEnd);
        if (o === recEnd) rec = freshRecord(recEnd);
      }
    };

    const resFramer = new HttpFramer({
      onHead(head, startRaw) {
        respStartRaw = startRaw;
        const requestLine = requests.shift() ?? '';
        const status = Number(head.split(' ', 3)[1]);
        const cl = headerValue(head, 'content-length');
        const chunked = /chunked/i.test(headerValue(head, 'transfer-encoding') ?? '');
        const info: ResponseInfo = { requestLine, status, contentLength: cl ? Number(cl) : undefined, chunked, index: 0 };
        events.push({ kind: 'response', requestLine, at: Date.now(), detail: status });
        cur = { info, fault: undefined, flipAtPayload: undefined, cutAtPayload: undefined };
        rec = freshRecord(0);
        const f = proxy.fault;
        if (f && matches(f, requestLine)) {
          info.index = matchCounts.get(f) ?? 0;
          matchCounts.set(f, info.index + 1);
          cur.fault = f;
          if (f.kind === 'cut') {
            const n = typeof f.afterBytes === 'function' ? f.afterBytes(info) : f.afterBytes;
            if ((f.counting ?? 'raw') === 'raw') cutAtRaw = startRaw + n;
            else cur.cutAtPayload = n;
          } else if (f.kind === 'flip') {
            cur.flipAtPayload = typeof f.payloadOffset === 'function' ? f.payloadOffset(info) : f.payloadOffset;
          }
        }
        if (status < 200 || status === 204 || status === 304 || requestLine.startsWith('HEAD ')) return { mode: 'none' };
        if (chunked) return { mode: 'chunked' };
        if (cl !== undefined) return { mode: 'length', length: Number(cl) };
        return { mode: 'close' };
      },
      onPayload(_buf, start, end, payloadOffset, raw) {
        if (!cur) return;
        const n = end - start;
        if (cur.cutAtPayload !== undefined && cur.cutAtPayload >= payloadOffset && cur.cutAtPayload < payloadOffset + n) {
          cutAtRaw = Math.min(cutAtRaw, raw + (cur.cutAtPayload - payloadOffset));
        }
        const f = cur.fault;
        if (f?.kind === 'flip' && cur.flipAtPayload !== undefined && cur.flipAtPayload >= payloadOffset && cur.flipAtPayload < payloadOffset + n) {
          mutate(raw + (cur.flipAtPayload - payloadOffset), f.mask ?? 0xff);
          events.push({ kind: 'flip', requestLine: cur.info.requestLine, at: Date.now(), detail: cur.flipAtPayload });
        }
        // Record damage is checked live, so arming it reaches a stream that is already open.
        const live = proxy.fault;
        trackRecords(n, payloadOffset, raw, live?.kind === 'flipRecord' && matches(live, cur.info.requestLine) ? live : undefined);
      },
      onEnd(endRaw) {
        cur = undefined;
        rec = freshRecord(0);
        holdFromRaw = Infinity;
        // A cut past the end of this response must not hit the next one on the connection.
        if (cutAtRaw >= endRaw) cutAtRaw = Infinity;
      },
    });

    upstream.on('data', (chunk: Buffer) => {
      if (dead) return;
      out = out.length ? Buffer.concat([out, chunk]) : chunk;
      try {
        resFramer.feed(chunk);
      } catch (err) {
        // A framing surprise would make every later fault land on the wrong byte: fail loudly.
        events.push({ kind: 'cut', requestLine: `framing error: ${(err as Error).message}`, at: Date.now() });
        conn.kill();
        return;
      }
      flushOut();
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  proxy.port = port;
  proxy.url = `http://127.0.0.1:${port}`;
  return proxy;
}
