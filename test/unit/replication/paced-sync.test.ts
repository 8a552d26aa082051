import assert from 'node:assert/strict';
import { fstatSync, openSync, writeSync } from 'node:fs';
import { describe, it } from 'node:test';
import { PacedSync } from '../../../server/src/replication/paced-sync.js';
import { testDir } from './fixtures.js';

const isOpen = (fd: number): boolean => {
  try {
    fstatSync(fd);
    return true;
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'EBADF');
    return false;
  }
};

describe('PacedSync', () => {
  it('never closes a descriptor under its running fdatasync, and closes it once that is done', async (t) => {
    const tmp = testDir(t, 'paced');
    const fd = openSync(tmp.file('f'), 'w');
    writeSync(fd, Buffer.alloc(1 << 20, 1));
    const pacing = new PacedSync(0, 1 << 30);
    pacing.maybe(fd, 1 << 20);
    pacing.close(fd);
    assert.equal(isOpen(fd), true, 'still open while the sync runs');
    const deadline = Date.now() + 5000;
    while (isOpen(fd) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
    assert.equal(isOpen(fd), false, 'closed after it');
  });

  it('starts at most one sync per interval; with none running, close() closes at once', (t) => {
    const tmp = testDir(t, 'paced');
    const a = openSync(tmp.file('a'), 'w');
    const b = openSync(tmp.file('b'), 'w');
    const pacing = new PacedSync(60_000, 1 << 30);
    pacing.maybe(a, 0);
    // Within the interval nothing starts on b, so b is not held open by a sync.
    pacing.maybe(b, 0);
    pacing.close(b);
    assert.equal(isOpen(b), false);
    pacing.close(a);
    assert.equal(isOpen(a), true, 'a has its sync running');
  });

  it('stands back when more than maxBytes were written in an interval', (t) => {
    const tmp = testDir(t, 'paced');
    const fd = openSync(tmp.file('f'), 'w');
    const pacing = new PacedSync(0, 1000);
    pacing.maybe(fd, 5000);
    pacing.close(fd);
    assert.equal(isOpen(fd), false, 'no sync was started, so close() closed it at once');
  });
});
