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
    const ds = new DirSync(dir);
    const first = ds.sync();
    // Runs as soon as the first fsync is done, before the next one can start: the directory is gone,
    // so only an fsync that starts after the first one finished can fail.
    const removed = first.then(() => rmSync(dir, { recursive: true }));
    const second = ds.sync();
    await first;
    await removed;
    await assert.rejects(second, { code: 'ENOENT' });
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
    const ds = new DirSync(dir);
    await ds.sync();
    const again = ds.sync();
    await again;
    rmSync(dir, { recursive: true });
    await assert.rejects(ds.sync(), { code: 'ENOENT' });
  });
});
