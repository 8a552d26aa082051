import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createLogger } from '../../server/src/log.js';
import { HaStateMachine, TRANSITIONS, TransitionError } from '../../server/src/ha/states.js';
import { locate, Timeline, type EpochStart } from '../../server/src/ha/timeline.js';

const c = (n: number): string => n.toString(16).padStart(16, '0');
const log = (txids: Record<number, number>) => ({
  covers: (txid: number) => txid >= Math.min(...Object.keys(txids).map(Number)) - 1,
  checksumAt: (txid: number) => (txids[txid] === undefined ? undefined : c(txids[txid]!)),
});

describe('locate: a peer’s position against a master’s history', () => {
  // Epoch 1 ran to txid 20 (checksum 20); epoch 2 began there and ran to 30; epoch 3 began at 30.
  const history: EpochStart[] = [
    { epoch: 1, txid: 0, checksum: '' },
    { epoch: 2, txid: 20, checksum: c(20) },
    { epoch: 3, txid: 30, checksum: c(30) },
  ];
  const here = { epoch: 3, txid: 35, checksum: c(35) };
  const logged = log({ 26: 26, 27: 27, 28: 28, 29: 29, 30: 30, 31: 31, 32: 32, 33: 33, 34: 34, 35: 35 });

  it('resumes a position on the history that the log reaches', () => {
    assert.deepEqual(locate({ epoch: 3, txid: 33, checksum: c(33) }, here, history, logged), { kind: 'resume' });
    assert.deepEqual(locate({ epoch: 2, txid: 30, checksum: c(30) }, here, history, logged), { kind: 'resume' }, 'exactly where its epoch ended');
    assert.deepEqual(locate({ epoch: 2, txid: 28, checksum: c(28) }, here, history, logged), { kind: 'resume' });
    assert.deepEqual(locate(here, here, history, logged), { kind: 'resume' });
  });

  it('sends an older position the log does not reach to a snapshot, not to quarantine', () => {
    assert.deepEqual(locate({ epoch: 1, txid: 12, checksum: c(12) }, here, history, logged), { kind: 'snapshot' });
  });

  it('calls a position past the end of its epoch diverged, with the fork and the count', () => {
    assert.deepEqual(locate({ epoch: 2, txid: 32, checksum: c(999) }, here, history, logged), { kind: 'diverged', forkTxid: 30, transactions: 2 });
    assert.deepEqual(locate({ epoch: 1, txid: 21, checksum: c(21) }, here, history, logged), { kind: 'diverged', forkTxid: 20, transactions: 1 });
  });

  it('calls a position with another checksum at a txid on the history diverged', () => {
    assert.equal(locate({ epoch: 2, txid: 30, checksum: c(7) }, here, history, logged).kind, 'diverged');
    assert.equal(locate({ epoch: 3, txid: 33, checksum: c(7) }, here, history, logged).kind, 'diverged');
    assert.equal(locate({ epoch: 3, txid: 36, checksum: c(36) }, here, history, logged).kind, 'diverged', 'ahead of this master in its own epoch');
  });

  it('says a peer of a newer epoch makes this master stale', () => {
    assert.deepEqual(locate({ epoch: 4, txid: 35, checksum: c(35) }, here, history, logged), { kind: 'newer_epoch' });
  });
});

describe('Timeline', () => {
  it('begins epochs above every epoch seen, persists, and takes a master’s history', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-timeline-'));
    try {
      const t = Timeline.load(dir);
      assert.equal(t.epoch, 0);
      t.beginEpoch(1, { txid: 0, checksum: c(0) });
      assert.ok(t.see(5));
      assert.ok(!t.see(4));
      assert.throws(() => t.beginEpoch(5, { txid: 9, checksum: c(9) }), /not above 5/);
      t.beginEpoch(6, { txid: 9, checksum: c(9) });
      const again = Timeline.load(dir);
      assert.equal(again.epoch, 6);
      assert.equal(again.highestSeen, 6);
      assert.equal(again.role, 'master');
      assert.deepEqual(again.history.map((h) => h.epoch), [1, 6]);
      again.adopt([...again.history, { epoch: 8, txid: 12, checksum: c(12) }]);
      again.setRole('replica', 'http://m:1');
      const third = Timeline.load(dir);
      assert.equal(third.highestSeen, 8);
      assert.equal(third.masterUrl, 'http://m:1');
      assert.match(readFileSync(path.join(dir, 'timeline.json'), 'utf8'), /"epoch":8/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads an earlier release’s master.json as a history of one epoch', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-timeline-'));
    try {
      writeFileSync(path.join(dir, 'master.json'), JSON.stringify({ epoch: 3 }));
      const t = Timeline.load(dir);
      assert.equal(t.role, 'master');
      assert.equal(t.epoch, 3);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('HaStateMachine', () => {
  it('docs/HA.md lists exactly the transitions of TRANSITIONS, with their meanings', () => {
    const doc = readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../docs/HA.md'), 'utf8');
    const norm = (t: string): string => t.replace(/’/g, "'").replace(/\.$/, '').toLowerCase();
    const documented = [...doc.matchAll(/^\| `([a-z.]+)` \| `([a-z.]+)` \| (.+) \|$/gm)].map((m) => `${m[1]} -> ${m[2]}: ${norm(m[3]!)}`);
    const coded = Object.entries(TRANSITIONS).flatMap(([from, tos]) => Object.entries(tos).map(([to, meaning]) => `${from} -> ${to}: ${norm(meaning!)}`));
    assert.deepEqual(documented, coded);
  });


  it('allows only the transitions in the table, and tells its listeners once per change', () => {
    const m = new HaStateMachine('starting', createLogger('silent'));
    const seen: string[] = [];
    m.onTransition((from, to) => seen.push(`${from}>${to}`));
    m.to('replica.following');
    m.to('replica.following');
    m.to('promoting');
    assert.equal(m.mode, 'replica', 'a promoting node is still a replica until the writer is open');
    m.to('master.serving');
    assert.equal(m.mode, 'master');
    assert.throws(() => m.to('replica.following'), TransitionError, 'a master demotes through demoting');
    m.to('master.fenced');
    m.to('demoting');
    m.to('replica.following');
    assert.deepEqual(seen, ['starting>replica.following', 'replica.following>promoting', 'promoting>master.serving', 'master.serving>master.fenced', 'master.fenced>demoting', 'demoting>replica.following']);
  });
});
