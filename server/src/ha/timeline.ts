import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { Position } from '../replication/wire/record.js';

/** Epoch `epoch` began right after transaction `txid`, whose database checksum was `checksum`. */
export interface EpochStart {
  epoch: number;
  txid: number;
  checksum: string;
}

export type LastRole = 'standalone' | 'master' | 'replica';

interface TimelineData {
  role: LastRole | undefined;
  /** The master a replica last followed: a node configured as master checks it before it takes over. */
  masterUrl: string | undefined;
  /** The highest epoch this node has heard of, from any master, peer or its own promotion. */
  highestSeen: number;
  history: EpochStart[];
}

/**
 * This node's view of the cluster's epochs, like PostgreSQL's timeline history: for every epoch,
 * the position at which it began. A position is on the history when it lies at or before the
 * point where its epoch ended; past that point it is a branch of its own (an old master's
 * writes no replica got). Kept beside the database and fsynced at each change, since a node
 * that forgot an epoch it saw could follow, or be, a fenced master.
 */
export class Timeline {
  private data: TimelineData;

  private constructor(private readonly file: string, data: TimelineData) {
    this.data = data;
  }

  /**
   * Reads `timeline.json` in the replication folder. A master of an earlier release kept only
   * its epoch in `master.json`; that becomes a history of one epoch.
   */
  static load(dir: string): Timeline {
    const file = path.join(dir, 'timeline.json');
    if (existsSync(file)) {
      const raw = JSON.parse(readFileSync(file, 'utf8')) as { role?: LastRole; master_url?: string; highest_seen?: number; history?: EpochStart[] };
      return new Timeline(file, { role: raw.role, masterUrl: raw.master_url, highestSeen: raw.highest_seen ?? 0, history: raw.history ?? [] });
    }
    const legacy = path.join(dir, 'master.json');
    if (existsSync(legacy)) {
      const { epoch } = JSON.parse(readFileSync(legacy, 'utf8')) as { epoch?: number };
      const e = typeof epoch === 'number' && epoch > 0 ? epoch : 1;
      return new Timeline(file, { role: 'master', masterUrl: undefined, highestSeen: e, history: [{ epoch: e, txid: 0, checksum: '' }] });
    }
    return new Timeline(file, { role: undefined, masterUrl: undefined, highestSeen: 0, history: [] });
  }

  get role(): LastRole | undefined {
    return this.data.role;
  }

  get masterUrl(): string | undefined {
    return this.data.masterUrl;
  }

  get highestSeen(): number {
    return Math.max(this.data.highestSeen, this.epoch);
  }

  /** The newest epoch on the history (0 before any master began one). */
  get epoch(): number {
    return this.data.history[this.data.history.length - 1]?.epoch ?? 0;
  }

  get history(): readonly EpochStart[] {
    return this.data.history;
  }

  /** Starts `epoch` (above every epoch this node has heard of) at `start`. */
  beginEpoch(epoch: number, start: { txid: number; checksum: string }): void {
    if (epoch <= this.highestSeen) throw new Error(`epoch ${epoch} is not above ${this.highestSeen}, the highest this node has seen`);
    this.data.history = [...this.data.history, { epoch, txid: start.txid, checksum: start.checksum }];
    this.data.highestSeen = epoch;
    this.data.role = 'master';
    this.data.masterUrl = undefined;
    this.save();
  }

  /** Takes a master's history as ours (it is the authority on what happened). */
  adopt(history: EpochStart[]): void {
    const last = history[history.length - 1];
    if (!last || JSON.stringify(history) === JSON.stringify(this.data.history)) return;
    this.data.history = history;
    this.data.highestSeen = Math.max(this.data.highestSeen, last.epoch);
    this.save();
  }

  /** Notes an epoch heard of; true when it is higher than any before. */
  see(epoch: number): boolean {
    if (epoch <= this.highestSeen) return false;
    this.data.highestSeen = epoch;
    this.save();
    return true;
  }

  setRole(role: LastRole, masterUrl?: string): void {
    if (this.data.role === role && this.data.masterUrl === masterUrl) return;
    this.data.role = role;
    this.data.masterUrl = masterUrl;
    this.save();
  }

  private save(): void {
    const tmp = `${this.file}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, JSON.stringify({ role: this.data.role, master_url: this.data.masterUrl, highest_seen: this.data.highestSeen, history: this.data.history }));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
  }
}

export type PositionVerdict =
  /** On the history, and the log can stream from it. */
  | { kind: 'resume' }
  /** On the history (or not known to be off it), but older than the log reaches: a snapshot brings it up. */
  | { kind: 'snapshot' }
  /** Past the point where its epoch ended, or with another checksum there: writes only it has. */
  | { kind: 'diverged'; forkTxid: number; transactions: number }
  /** The peer has heard of an epoch this master has not: this master is stale. */
  | { kind: 'newer_epoch' };

/** What `locate` needs of the master's replication log. */
export interface LogView {
  /** Whether the log can stream what follows `txid`. */
  covers(txid: number): boolean;
  /** The checksum after `txid`, while the log holds its record. */
  checksumAt(txid: number): string | undefined;
}

/** Where a peer's position stands against a master's history. `here` is the master's newest position. */
export function locate(pos: Position, here: Position, history: readonly EpochStart[], log: LogView): PositionVerdict {
  if (pos.epoch > here.epoch) return { kind: 'newer_epoch' };
  // The end of the peer's epoch on our history: where the next epoch began, or our head.
  const next = history.find((h) => h.epoch > pos.epoch);
  const end = next ? { txid: next.txid, checksum: next.checksum } : here;
  const diverged = (): PositionVerdict => {
    const forkTxid = Math.min(pos.txid, end.txid);
    return { kind: 'diverged', forkTxid, transactions: Math.max(1, pos.txid - forkTxid) };
  };
  if (pos.txid > end.txid) return { kind: 'diverged', forkTxid: end.txid, transactions: pos.txid - end.txid };
  if (pos.txid === end.txid) {
    if (pos.checksum !== end.checksum) return diverged();
    return pos.txid === here.txid || log.covers(pos.txid) ? { kind: 'resume' } : { kind: 'snapshot' };
  }
  const logged = log.checksumAt(pos.txid);
  if (logged === undefined) return { kind: 'snapshot' };
  return logged === pos.checksum ? { kind: 'resume' } : diverged();
}
