import { Etcd3, type IKeyValue, type Lease } from 'etcd3';
import type { Coordinator, Handover, LeaderValue, Lock, LockEvents, MemberValue } from './coordinator.js';

export interface EtcdOptions {
  endpoints: string[];
  /** Key prefix: NEBULAGC_CLUSTER_NAME. */
  prefix: string;
  /** Lease TTL in seconds; etcd raises anything below its minimum (2 s with its default election timeout). */
  ttlS: number;
}

const parse = (kv: IKeyValue): LeaderValue | undefined => {
  try {
    const v = JSON.parse(kv.value.toString('utf8')) as { nodeId?: string; url?: string };
    if (typeof v.nodeId !== 'string' || typeof v.url !== 'string') return undefined;
    return { nodeId: v.nodeId, url: v.url, epoch: Number(kv.create_revision) };
  } catch {
    return undefined;
  }
};

/**
 * The election on etcd: the leader key is written in a transaction only if absent, bound to a
 * lease the client keeps alive; the key's create_revision is the epoch (etcd's revisions only
 * grow). Members publish their positions under a lease of their own.
 */
export class EtcdCoordinator implements Coordinator {
  readonly name = 'etcd';
  private readonly client: Etcd3;
  private memberLease: Lease | undefined;

  constructor(private readonly opts: EtcdOptions) {
    this.client = new Etcd3({ hosts: opts.endpoints, dialTimeout: 2000 });
  }

  get ttlMs(): number {
    return this.opts.ttlS * 1000;
  }

  private get leaderKey(): string {
    return `${this.opts.prefix}/leader`;
  }

  async acquire(value: Omit<LeaderValue, 'epoch'>, events: LockEvents): Promise<Lock | undefined> {
    const lease = this.client.lease(this.opts.ttlS, { autoKeepAlive: true });
    let renewedAt = performance.now();
    let firedAt = renewedAt;
    let held = false;
    // A renewal counts from when it was sent, not from when its answer was read: an answer that
    // waited in the socket while this process was paused must not make the lease look fresh.
    lease.on('keepaliveFired', () => {
      firedAt = performance.now();
    });
    lease.on('keepaliveSucceeded', () => {
      renewedAt = firedAt;
    });
    lease.on('keepaliveFailed', () => {
      if (held) events.renewFailed('the lease keepalive failed');
    });
    lease.on('lost', (err) => {
      if (held) events.lost(err.message);
    });
    try {
      const asked = performance.now();
      const id = await lease.grant();
      renewedAt = asked;
      const r = await this.client
        .if(this.leaderKey, 'Create', '==', 0)
        .then(this.client.put(this.leaderKey).value(JSON.stringify(value)).lease(id))
        .commit();
      if (!r.succeeded) {
        await lease.revoke();
        return undefined;
      }
      held = true;
      const epoch = Number(r.header.revision);
      return {
        epoch,
        get renewedAt() {
          return renewedAt;
        },
        release: async () => {
          held = false;
          await lease.revoke();
        },
      };
    } catch (err) {
      lease.release();
      throw err;
    }
  }

  async holder(): Promise<LeaderValue | undefined> {
    const res = await this.client.get(this.leaderKey).exec();
    const kv = res.kvs[0];
    return kv ? parse(kv) : undefined;
  }

  async watch(fn: (holder: LeaderValue | undefined) => void): Promise<() => void> {
    const watcher = await this.client.watch().key(this.leaderKey).create();
    watcher.on('put', (kv) => fn(parse(kv)));
    watcher.on('delete', () => fn(undefined));
    return () => void watcher.cancel();
  }

  async publish(member: MemberValue): Promise<void> {
    this.memberLease ??= this.client.lease(this.opts.ttlS, { autoKeepAlive: true });
    // A lost lease (etcd was down past the TTL) takes the record with it: start a new one.
    if (this.memberLease.revoked()) this.memberLease = this.client.lease(this.opts.ttlS, { autoKeepAlive: true });
    await this.memberLease.put(`${this.opts.prefix}/members/${member.nodeId}`).value(JSON.stringify(member));
  }

  async members(): Promise<MemberValue[]> {
    const all = await this.client.getAll().prefix(`${this.opts.prefix}/members/`).strings();
    const out: MemberValue[] = [];
    for (const v of Object.values(all)) {
      try {
        out.push(JSON.parse(v) as MemberValue);
      } catch {
        // Not ours: skip it.
      }
    }
    return out;
  }

  async setHandover(h: Handover | undefined): Promise<void> {
    const key = `${this.opts.prefix}/handover`;
    if (h) await this.client.put(key).value(JSON.stringify(h));
    else await this.client.delete().key(key);
  }

  async handover(): Promise<Handover | undefined> {
    const v = await this.client.get(`${this.opts.prefix}/handover`).string();
    if (!v) return undefined;
    try {
      const h = JSON.parse(v) as Handover;
      return typeof h.to === 'string' && typeof h.until === 'number' ? h : undefined;
    } catch {
      return undefined;
    }
  }

  async close(): Promise<void> {
    await this.memberLease?.revoke().catch(() => undefined);
    this.client.close();
  }
}
