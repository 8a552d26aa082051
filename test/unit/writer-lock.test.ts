import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WriterLock, WriterLockHeldError } from '../../server/src/ha/writer-lock.js';

// The child imports the same built module the test does.
const moduleUrl = new URL('../../server/src/ha/writer-lock.js', import.meta.url).href;

/** A child process that takes the lock (or fails to) and prints one JSON line about it; with hold=1 it then waits to be killed. */
function child(dbPath: string, hold: boolean): ChildProcess {
  const script = `
    import { WriterLock } from ${JSON.stringify(moduleUrl)};
    try {
      WriterLock.acquire(process.argv[1], { nodeId: 'child-node' });
      console.log(JSON.stringify({ ok: true, pid: process.pid }));
      if (process.argv[2] === '1') setInterval(() => {}, 60_000); else process.exit(0);
    } catch (err) {
      console.log(JSON.stringify({ ok: false, name: err.name, holderPid: err.holderPid, message: err.message }));
      process.exit(0);
    }`;
  return spawn(process.execPath, ['--input-type=module', '-e', script, dbPath, hold ? '1' : '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
}

interface ChildLine {
  ok: boolean;
  pid?: number;
  name?: string;
  holderPid?: number;
  message?: string;
}

/** The child's first line of output, within a bounded time. */
function firstLine(proc: ChildProcess, ms = 10_000): Promise<ChildLine> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error('child did not answer in time')), ms);
    proc.stdout!.on('data', (chunk: Buffer) => {
      buf += chunk.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(JSON.parse(buf.slice(0, nl)) as ChildLine);
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`child exited (${code}) before answering`));
    });
  });
}

function exited(proc: ChildProcess, ms = 10_000): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('child did not exit in time')), ms);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

describe('WriterLock', () => {
  let dir: string;
  let dbPath: string;
  const children: ChildProcess[] = [];

  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-writer-lock-'));
    dbPath = path.join(dir, 'data', 'nebulagc.db');
  });
  after(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('acquires, releases and acquires again; records the holder beside the database', () => {
    const lock = WriterLock.acquire(dbPath, { nodeId: 'n1' });
    assert.equal(lock.lockPath, `${dbPath}-writer.lock`);
    const info = JSON.parse(readFileSync(`${dbPath}-writer.lock.json`, 'utf8')) as Record<string, unknown>;
    assert.equal(info.pid, process.pid);
    assert.equal(info.hostname, os.hostname());
    assert.equal(info.node_id, 'n1');
    assert.ok(!Number.isNaN(Date.parse(info.acquired_at as string)));
    assert.equal(statSync(`${dbPath}-writer.lock.json`).mode & 0o777, 0o600);
    lock.release();
    lock.release();
    assert.equal(existsSync(`${dbPath}-writer.lock.json`), false);
    const again = WriterLock.acquire(dbPath);
    again.release();
  });

  it('refuses a second acquire from the same process, naming this pid', () => {
    const lock = WriterLock.acquire(dbPath, { nodeId: 'n1' });
    try {
      for (let i = 0; i < 2; i++) {
        assert.throws(
          () => WriterLock.acquire(dbPath),
          (err: unknown) => {
            assert.ok(err instanceof WriterLockHeldError);
            assert.equal(err.holderPid, process.pid);
            assert.match(err.message, new RegExp(`pid ${process.pid} on host .*, node n1, since `));
            assert.match(err.message, /is the writer of .*nebulagc\.db: a second master/);
            assert.match(err.message, /NEBULAGC_DB_PATH/);
            return true;
          },
        );
      }
    } finally {
      lock.release();
    }
  });

  it('a refused attempt in this process does not drop the lock it found held', async () => {
    const lock = WriterLock.acquire(dbPath);
    try {
      // Closing the refused connection must not release the holder's fcntl locks (SQLite defers
      // closing descriptors on an inode this process still holds locks on).
      assert.throws(() => WriterLock.acquire(dbPath), WriterLockHeldError);
      const proc = child(dbPath, false);
      children.push(proc);
      const line = await firstLine(proc);
      assert.equal(line.ok, false);
      assert.equal(line.name, 'WriterLockHeldError');
      assert.equal(line.holderPid, process.pid);
      await exited(proc);
    } finally {
      lock.release();
    }
  });

  it('a stale holder file from a dead process does not block', () => {
    writeFileSync(
      `${dbPath}-writer.lock.json`,
      JSON.stringify({ pid: 999_999_999, hostname: 'gone', node_id: 'old', acquired_at: '2000-01-01T00:00:00.000Z' }),
    );
    const lock = WriterLock.acquire(dbPath, { nodeId: 'n2' });
    const info = JSON.parse(readFileSync(`${dbPath}-writer.lock.json`, 'utf8')) as Record<string, unknown>;
    assert.equal(info.pid, process.pid);
    assert.equal(info.node_id, 'n2');
    lock.release();
  });

  it('another process holding the lock refuses us by its pid, until it is killed -9', async () => {
    const proc = child(dbPath, true);
    children.push(proc);
    const line = await firstLine(proc);
    assert.equal(line.ok, true);
    assert.equal(line.pid, proc.pid);

    assert.throws(
      () => WriterLock.acquire(dbPath),
      (err: unknown) => {
        assert.ok(err instanceof WriterLockHeldError);
        assert.equal(err.holderPid, proc.pid);
        assert.match(err.message, new RegExp(`^another process \\(pid ${proc.pid} on host .*, node child-node, since `));
        return true;
      },
    );

    proc.kill('SIGKILL');
    await exited(proc);
    // The kernel has dropped the dead process's locks; its holder file is left behind, stale.
    const lock = WriterLock.acquire(dbPath);
    const info = JSON.parse(readFileSync(`${dbPath}-writer.lock.json`, 'utf8')) as Record<string, unknown>;
    assert.equal(info.pid, process.pid);
    lock.release();
  });
});
