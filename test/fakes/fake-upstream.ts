import { PassThrough } from 'node:stream';
import type { EpochStart } from '../../server/src/ha/timeline.js';
import { UpstreamRefusal, type OpenedSnapshot, type OpenedStream, type Peer, type Upstream } from '../../server/src/replication/wire/protocol.js';
import { RECORD_FORMAT, type Position } from '../../server/src/replication/wire/record.js';

/**
 * A master as a replica sees it through the Upstream interface, scripted by the test: what a
 * stream request answers (a refusal, or a stream the test writes records into), what a
 * snapshot request answers, and every call the replica made, in order.
 */
export class FakeUpstream implements Upstream {
  readonly url = 'http://fake-master.invalid';
  readonly calls: { kind: 'stream' | 'snapshot' | 'ack'; at?: Position; peer?: Peer }[] = [];
  /** The stream answer's epoch and history, as a master's headers would carry them. */
  epoch = 1;
  history: EpochStart[] = [{ epoch: 1, txid: 0, checksum: '' }];
  /** When set, stream requests are refused with it. */
  refuseStream: UpstreamRefusal | undefined;
  /** When set, snapshot requests are refused with it (the default: no snapshot to give). */
  refuseSnapshot: UpstreamRefusal | undefined = new UpstreamRefusal(503, 'NOT_READY', {}, 'the fake has no snapshot');
  private current: PassThrough | undefined;
  private waiting: (() => void)[] = [];

  stream(from: Position, _format: number, peer: Peer, signal: AbortSignal): Promise<OpenedStream> {
    this.calls.push({ kind: 'stream', at: from, peer });
    if (this.refuseStream) return Promise.reject(this.refuseStream);
    const body = new PassThrough();
    // As an HTTP response does: aborting the request destroys the body.
    signal.addEventListener('abort', () => body.destroy(signal.reason instanceof Error ? signal.reason : new Error('aborted')), { once: true });
    this.current = body;
    for (const w of this.waiting.splice(0)) w();
    return Promise.resolve({ body, format: String(RECORD_FORMAT), epoch: this.epoch, history: this.history, advertiseUrl: this.url, nodeId: 'fake', sync: false });
  }

  snapshot(peer: Peer): Promise<OpenedSnapshot> {
    this.calls.push({ kind: 'snapshot', peer });
    return Promise.reject(this.refuseSnapshot ?? new UpstreamRefusal(503, 'NOT_READY', {}, 'no snapshot'));
  }

  ack(_replicaId: string, durable: Position): Promise<void> {
    this.calls.push({ kind: 'ack', at: durable });
    return Promise.resolve();
  }

  /** Resolves once a stream is open, to write records into. */
  async opened(): Promise<PassThrough> {
    if (!this.current) await new Promise<void>((r) => this.waiting.push(r));
    return this.current!;
  }

  close(): void {
    this.current?.end();
  }
}
