import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { openStore, type OpenedStore } from '../../server/src/db/open-store.js';
import { WritesRefusedError } from '../../server/src/db/writer.js';
import { createCluster } from '../../server/src/domain/clusters.js';
import { HeartbeatCoalescer } from '../../server/src/domain/heartbeats.js';
import { createNode, getNode } from '../../server/src/domain/nodes.js';
import type { Store } from '../../server/src/domain/store.js';
import { createTenant } from '../../server/src/domain/tenants.js';

const SECRET = 'heartbeat-test-secret-0123456789abcdef0123';

let dir: string;
let opened: OpenedStore;
let store: Store;
let clusterId: string;
let nodeIds: string[];

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-heartbeats-'));
  opened = openStore({ dbPath: path.join(dir, 'hb.db'), synchronous: 'NORMAL', secret: SECRET });
  store = opened.store;
  const tenant = createTenant(store, { name: 'acme' });
  clusterId = createCluster(store, { tenant_id: tenant.id, name: 'c1' }).cluster.id;
  nodeIds = [];
  for (let i = 0; i < 50; i++) nodeIds.push(createNode(store, clusterId, { name: `n${i}` }).node.id);
});

afterEach(() => {
  opened.close();
  rmSync(dir, { recursive: true, force: true });
});

const lastSeen = (id: string): string | null => getNode(store, clusterId, id).last_seen_at;
const noop = (): void => {};

/** An ISO timestamp `i` ms after a fixed base, so order is well defined. */
const at = (i: number): string => new Date(Date.UTC(2030, 0, 1) + i).toISOString();

describe('HeartbeatCoalescer', () => {
  it('writes 1000 beats across 50 nodes in exactly one commit, keeping the latest per node', () => {
    const hb = new HeartbeatCoalescer(store, 60_000, noop);
    const latest = new Map<string, string>();
    for (let i = 0; i < 1000; i++) {
      const id = nodeIds[i % 50]!;
      hb.record(id, at(i));
      latest.set(id, at(i));
    }
    assert.equal(hb.pendingCount, 50);
    assert.equal(hb.stats.received, 1000);
    for (const [id, ts] of latest) assert.equal(hb.pendingFor(id), ts);
    // Nothing written yet.
    for (const id of nodeIds) assert.equal(lastSeen(id), null);

    const before = store.writer.commits;
    assert.equal(hb.flush(), 50);
    assert.equal(store.writer.commits, before + 1);

    for (const [id, ts] of latest) assert.equal(lastSeen(id), ts);
    assert.equal(hb.pendingCount, 0);
    assert.equal(hb.pendingFor(nodeIds[0]!), undefined);
    assert.deepEqual(hb.stats, { received: 1000, flushes: 1, flushedRows: 50 });
  });

  it('does no commit when nothing is pending', () => {
    const hb = new HeartbeatCoalescer(store, 60_000, noop);
    const before = store.writer.commits;
    assert.equal(hb.flush(), 0);
    assert.equal(store.writer.commits, before);
    assert.equal(hb.stats.flushes, 0);
  });

  it('never moves last_seen_at backwards', () => {
    const hb = new HeartbeatCoalescer(store, 60_000, noop);
    const id = nodeIds[0]!;
    hb.record(id, at(5000));
    hb.flush();
    hb.record(id, at(1000));
    assert.equal(hb.flush(), 0);
    assert.equal(lastSeen(id), at(5000));
  });

  it('ignores beats for unknown nodes without failing the batch', () => {
    const hb = new HeartbeatCoalescer(store, 60_000, noop);
    hb.record('00000000-0000-4000-8000-000000000000', at(1));
    hb.record(nodeIds[3]!, at(2));
    assert.equal(hb.flush(), 1);
    assert.equal(lastSeen(nodeIds[3]!), at(2));
  });

  it('keeps beats pending when the writer refuses, and writes them after allow()', () => {
    const hb = new HeartbeatCoalescer(store, 60_000, noop);
    for (let i = 0; i < 50; i++) hb.record(nodeIds[i]!, at(i));
    store.writer.refuse('x');
    const before = store.writer.commits;
    assert.throws(() => hb.flush(), (err: unknown) => err instanceof WritesRefusedError && err.reason === 'x');
    assert.equal(store.writer.commits, before);
    assert.equal(hb.pendingCount, 50);
    for (let i = 0; i < 50; i++) assert.equal(hb.pendingFor(nodeIds[i]!), at(i));
    for (const id of nodeIds) assert.equal(lastSeen(id), null);

    // A newer beat arriving while refused wins over the kept one.
    hb.record(nodeIds[0]!, at(9999));

    store.writer.allow();
    assert.equal(hb.flush(), 50);
    assert.equal(store.writer.commits, before + 1);
    assert.equal(lastSeen(nodeIds[0]!), at(9999));
    for (let i = 1; i < 50; i++) assert.equal(lastSeen(nodeIds[i]!), at(i));
    assert.equal(hb.pendingCount, 0);
  });

  it('keeps a newer beat recorded after a failed flush over the failed batch', () => {
    const hb = new HeartbeatCoalescer(store, 60_000, noop);
    const id = nodeIds[1]!;
    hb.record(id, at(10));
    store.writer.refuse('lost lease');
    assert.throws(() => hb.flush(), WritesRefusedError);
    hb.record(id, at(20));
    assert.throws(() => hb.flush(), WritesRefusedError);
    assert.equal(hb.pendingFor(id), at(20));
    store.writer.allow();
    hb.flush();
    assert.equal(lastSeen(id), at(20));
  });

  it('stop() flushes what is pending and reports errors through onError', () => {
    const errors: unknown[] = [];
    const hb = new HeartbeatCoalescer(store, 60_000, (e) => errors.push(e));
    hb.start();
    hb.record(nodeIds[2]!, at(3));
    store.writer.refuse('replica');
    hb.stop();
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof WritesRefusedError);
    store.writer.allow();
    hb.stop();
    assert.equal(errors.length, 1);
    assert.equal(lastSeen(nodeIds[2]!), at(3));
  });
});
