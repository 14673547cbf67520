// SPDX-License-Identifier: MIT
// Unit tests for batched log lines: nothing lost, nothing reordered, written together.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LineBatch } from './index.ts';

function withFile(fn: (fd: number, read: () => string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-log-'));
  const path = join(dir, 'out');
  const fd = openSync(path, 'a');
  return fn(fd, () => readFileSync(path, 'utf8')).finally(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
}

test('lines wait for the batch, then come out together and in order', () =>
  withFile(async (fd, read) => {
    const b = new LineBatch(fd);
    b.write('{"n":1}\n');
    b.write('{"n":2}\n');
    assert.equal(read(), '', 'not yet written');
    b.flush();
    assert.equal(read(), '{"n":1}\n{"n":2}\n');
  }));

test('a pending batch is written within a few milliseconds without a flush', () =>
  withFile(async (fd, read) => {
    const b = new LineBatch(fd);
    b.write('{"late":true}\n');
    for (let i = 0; i < 50 && read() === ''; i++) await sleep(10);
    assert.equal(read(), '{"late":true}\n');
  }));

test('a large batch is written at once', () =>
  withFile(async (fd, read) => {
    const b = new LineBatch(fd);
    const line = `{"pad":"${'x'.repeat(1000)}"}\n`;
    for (let i = 0; i < 20; i++) b.write(line);
    assert.ok(read().length >= 16 * 1024, 'written when the batch passed its size');
    b.flush();
    assert.equal(read(), line.repeat(20));
  }));
