// SPDX-License-Identifier: MIT
// Unit tests for WritePacer: synchronous durable writes only when cleanup was idle.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { WritePacer } from './pacer.ts';

describe('WritePacer', () => {
  test('the first write of an idle process is synchronous', () => {
    assert.equal(new WritePacer().sync(0), true);
  });

  test('a write right after the last one ended goes to the pool; after a pause it is synchronous again', () => {
    const p = new WritePacer();
    p.syncDone(10, 10.3);
    assert.equal(p.sync(10.4), false, '0.1 ms after a 0.3 ms write');
    assert.equal(p.sync(12), true, 'well after it');
  });

  test('never synchronous while an asynchronous write is in flight', () => {
    const p = new WritePacer();
    p.asyncStart();
    assert.equal(p.sync(1000), false);
    p.asyncDone(1000);
    assert.equal(p.sync(1000.1), false, 'just ended');
    assert.equal(p.sync(1010), true);
  });

  test('pooled counts a write as in flight until it settles, even when it fails', async () => {
    const p = new WritePacer();
    let release!: () => void;
    const w = p.pooled(() => new Promise<void>((r) => (release = r)));
    assert.equal(p.sync(1e12), false, 'in flight');
    release();
    await w;
    await assert.rejects(p.pooled(() => Promise.reject(new Error('EIO'))), /EIO/);
    assert.equal(p.sync(performance.now() + 1000), true, 'nothing in flight afterwards');
  });

  test('after a burst of slow writes, quick pooled writes that overlap nothing bring synchronous writes back', async () => {
    const p = new WritePacer();
    // A burst: synchronous writes of 50 ms each (a disk busy with other work).
    for (let t = 0; t < 1000; t += 100) p.syncDone(t, t + 50);
    const now = performance.now();
    p.syncDone(now - 60, now - 10);
    assert.equal(p.sync(now), false, '10 ms idle after 50 ms writes: not idle enough');
    // One client at a time again: each write goes to the pool alone and is quick.
    for (let i = 0; i < 30; i++) await p.pooled(() => new Promise<void>((r) => setImmediate(r)), true);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(p.sync(performance.now()), true, 'idle for 20 ms after quick writes: synchronous again');
  });

  test('a slow pooled fsync (a large message streamed to disk) does not count as disk latency', async () => {
    const p = new WritePacer();
    await p.pooled(() => new Promise<void>((r) => setTimeout(r, 40)));
    await new Promise((r) => setTimeout(r, 2));
    assert.equal(p.sync(performance.now()), true, 'the estimate is still the default 0.25 ms');
  });

  test('pooled writes that overlap others do not count as disk latency', async () => {
    const p = new WritePacer();
    const slow: (() => void)[] = [];
    // Two at once, each held 30 ms: neither is a sample.
    const a = p.pooled(() => new Promise<void>((r) => slow.push(r)), true);
    const b = p.pooled(() => new Promise<void>((r) => slow.push(r)), true);
    await new Promise((r) => setTimeout(r, 30));
    for (const r of slow) r();
    await Promise.all([a, b]);
    await new Promise((r) => setTimeout(r, 2));
    assert.equal(p.sync(performance.now()), true, 'the estimate is still the default 0.25 ms');
  });

  test('the idle gap it asks for follows how long synchronous writes take', () => {
    const p = new WritePacer();
    // A slow disk: 5 ms per write.
    for (let t = 0; t < 200; t += 20) p.syncDone(t, t + 5);
    assert.equal(p.sync(185 + 6), false, '6 ms idle is not enough when writes take about 5 ms');
    assert.equal(p.sync(185 + 11), true);
  });
});
