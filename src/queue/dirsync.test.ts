// SPDX-License-Identifier: MIT
// Unit tests for DirSync, the group commit of directory fsyncs.

import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirSync } from './dirsync.ts';

let root: string;
let dir: string;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'palisade-dirsync-'));
  dir = join(root, 'incoming');
  mkdirSync(dir);
});

afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

describe('DirSync', () => {
  test('resolves a single caller', async () => {
    await new DirSync(dir).sync();
  });

  test('resolves every one of many concurrent callers', async () => {
    const ds = new DirSync(dir);
    const results = await Promise.allSettled(Array.from({ length: 50 }, () => ds.sync()));
    assert.ok(results.every((r) => r.status === 'fulfilled'));
  });

  test('lets callers that arrive during an fsync share the one next fsync', async () => {
    const ds = new DirSync(dir);
    const first = ds.sync();
    const second = ds.sync();
    const third = ds.sync();
    assert.notEqual(second, first);
    assert.equal(third, second);
    await Promise.all([first, second, third]);
  });

  test('makes a caller that arrives after an fsync started wait for a new fsync', async () => {
    // A counting fsync: each call records when it started and finished.
    const events: string[] = [];
    let n = 0;
    const ds = new DirSync(dir, async () => {
      const k = ++n;
      events.push(`start ${k}`);
      await new Promise((r) => setTimeout(r, 5));
      events.push(`end ${k}`);
    });
    const first = ds.sync().then(() => events.push('first resolved'));
    const second = ds.sync().then(() => events.push('second resolved'));
    await Promise.all([first, second]);
    assert.deepEqual(events, ['start 1', 'end 1', 'first resolved', 'start 2', 'end 2', 'second resolved']);
  });

  test('orders the shared fsync after the running one', async () => {
    const ds = new DirSync(dir);
    const order: string[] = [];
    const first = ds.sync().then(() => order.push('first'));
    const second = ds.sync().then(() => order.push('second'));
    await Promise.all([first, second]);
    assert.deepEqual(order, ['first', 'second']);
  });

  test('starts afresh after a failed fsync', async () => {
    const ds = new DirSync(join(root, 'missing'));
    await assert.rejects(ds.sync(), { code: 'ENOENT' });
    mkdirSync(join(root, 'missing'));
    await ds.sync();
  });

  test('serves callers after the previous round has finished with a new fsync', async () => {
    let n = 0;
    const ds = new DirSync(dir, async () => {
      n++;
    });
    await ds.sync();
    await ds.sync();
    await ds.sync();
    assert.equal(n, 3);
  });

  test('keeps the directory open between fsyncs and reports a failing fsync to its callers', async () => {
    let fail = false;
    const fds = new Set<unknown>();
    const ds = new DirSync(dir, async (fh) => {
      fds.add(fh);
      if (fail) throw Object.assign(new Error('EIO'), { code: 'EIO' });
    });
    await ds.sync();
    await ds.sync();
    assert.equal(fds.size, 1, 'one descriptor for both fsyncs');
    fail = true;
    await assert.rejects(ds.sync(), { code: 'EIO' });
    fail = false;
    await ds.sync();
  });
});
