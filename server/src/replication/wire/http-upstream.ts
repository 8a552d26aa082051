import type { IncomingMessage } from 'node:http';
import type { EpochStart } from '../../ha/timeline.js';
import { describeError, errorBodyOf, type InternalClient } from './internal-client.js';
import { HEADERS, PATHS, UpstreamRefusal, type OpenedSnapshot, type OpenedStream, type Peer, type Upstream } from './protocol.js';
import type { Position } from './record.js';

const peerQuery = (peer: Peer): Record<string, string> => ({
  replica_id: peer.replicaId,
  replica_url: peer.replicaUrl,
  secret_fp: peer.secretFp,
  seen_epoch: String(peer.seenEpoch),
  candidate: String(peer.candidate),
  ...(peer.instanceId ? { instance_id: peer.instanceId } : {}),
});

const header = (res: IncomingMessage, name: string): string | undefined => {
  const v = res.headers[name];
  return typeof v === 'string' ? v : undefined;
};

/** The replication protocol over HTTP, through the internal client (replication secret, mTLS). */
export class HttpUpstream implements Upstream {
  constructor(private readonly client: InternalClient) {}

  get url(): string {
    return this.client.baseUrl;
  }

  async stream(from: Position, format: number, peer: Peer, signal: AbortSignal): Promise<OpenedStream> {
    const q = new URLSearchParams({ from: String(from.txid), epoch: String(from.epoch), checksum: from.checksum, format: String(format), ...peerQuery(peer) });
    const res = await this.opened(await this.client.open('GET', `${PATHS.stream}?${q}`, undefined, signal), 'stream');
    const history = header(res, HEADERS.history);
    return {
      body: res,
      format: header(res, HEADERS.recordFormat),
      epoch: Number(header(res, HEADERS.epoch)),
      history: history === undefined ? undefined : (JSON.parse(history) as EpochStart[]),
      advertiseUrl: header(res, HEADERS.advertiseUrl),
      nodeId: header(res, HEADERS.nodeId),
      sync: header(res, HEADERS.sync) === '1',
    };
  }

  async snapshot(peer: Peer, signal: AbortSignal): Promise<OpenedSnapshot> {
    const res = await this.opened(await this.client.open('GET', `${PATHS.snapshot}?${new URLSearchParams(peerQuery(peer))}`, undefined, signal), 'snapshot');
    return { body: res, contentLength: Number(res.headers['content-length'] ?? NaN) };
  }

  async ack(replicaId: string, durable: Position, seenEpoch: number): Promise<void> {
    const r = await this.client.json('POST', PATHS.ack, { replica_id: replicaId, ...durable, seen_epoch: seenEpoch });
    if (r.status !== 200) throw new UpstreamRefusal(r.status, undefined, {}, `ack answered ${r.status}${describeError(r.body)}`);
  }

  close(): void {
    this.client.close();
  }

  private async opened(res: IncomingMessage, what: string): Promise<IncomingMessage> {
    if (res.statusCode === 200) return res;
    const body = (await errorBodyOf(res)) as { code?: string; details?: Record<string, unknown> } | undefined;
    const status = res.statusCode ?? 0;
    throw new UpstreamRefusal(status, body?.code, body?.details ?? {}, `${what} request answered ${status}${describeError(body)}`);
  }
}
