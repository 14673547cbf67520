// SPDX-License-Identifier: MIT
// Unit tests for the per-destination scheduler: slow start, the dead state, and an operator's revive.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Destinations, destinationTable, type QueuedJob } from './destinations.ts';

/** A job whose run() resolves when the test says so. */
function job(dest: string, log: string[]): QueuedJob & { finish(destFailed: boolean): void } {
  let finish: (v: string | null) => void = () => {};
  return {
    dest,
    run: () => {
      log.push(`run ${dest}`);
      return new Promise<string | null>((r) => (finish = r));
    },
    fail: (reason) => log.push(`fail ${dest}: ${reason}`),
    finish: (destFailed) => finish(destFailed ? 'connect ECONNREFUSED' : null),
  };
}

const tick = () => new Promise((r) => setImmediate(r));

test('a destination failing at the smallest window turns dead: its backlog and new jobs are deferred at once', async () => {
  const log: string[] = [];
  let t = 1000;
  const d = new Destinations({ initial: 1, max: 4, global: 100, deadMs: 60_000 }, () => t);
  const jobs = Array.from({ length: 5 }, () => job('down.test', log));
  for (const j of jobs) d.add(j);
  for (let i = 0; i < 3; i++) {
    jobs[i]!.finish(true);
    await tick();
  }
  assert.deepEqual(log.filter((l) => l.startsWith('run')).length, 3);
  assert.equal(log.filter((l) => l.startsWith('fail')).length, 2, 'the backlog was deferred');
  const late = job('down.test', log);
  d.add(late);
  assert.match(log.at(-1)!, /^fail down\.test: destination down\.test is not responding/);
  assert.match(log.at(-1)!, /; last error: connect ECONNREFUSED$/, 'the cause stays in sight');
  // Other destinations are not affected.
  const other = job('up.test', log);
  d.add(other);
  assert.equal(log.at(-1), 'run up.test');
  // Dead for deadMs, then tried again.
  t += 60_001;
  d.add(job('down.test', log));
  assert.equal(log.at(-1), 'run down.test');
});

test('revive (an operator\'s flush) makes a dead destination take jobs again at once', async () => {
  const log: string[] = [];
  const d = new Destinations({ initial: 1, max: 4, global: 100, deadMs: 60_000 }, () => 1000);
  for (let i = 0; i < 3; i++) {
    const j = job('down.test', log);
    d.add(j);
    j.finish(true);
    await tick();
  }
  d.add(job('down.test', log));
  assert.match(log.at(-1)!, /^fail /);
  d.revive();
  d.add(job('down.test', log));
  assert.equal(log.at(-1), 'run down.test');
});

test('the window grows by one per success up to the maximum', async () => {
  const log: string[] = [];
  const d = new Destinations({ initial: 1, max: 2, global: 100, deadMs: 1000 }, () => 0);
  const jobs = Array.from({ length: 4 }, () => job('x.test', log));
  for (const j of jobs) d.add(j);
  assert.equal(log.length, 1, 'window 1: one job runs');
  jobs[0]!.finish(false);
  await tick();
  assert.equal(log.length, 3, 'window 2: two run');
});

test('a destination with its own limits: window bounds from [delivery.destinations], others keep the defaults', async () => {
  const log: string[] = [];
  const perDestination = destinationTable({ 'slow.test': { concurrency: 1 }, '.big.test': { initial_concurrency: 3 } });
  const d = new Destinations({ initial: 2, max: 4, global: 100, deadMs: 1000, perDestination }, () => 0);
  const slow = Array.from({ length: 3 }, () => job('slow.test', log));
  const other = Array.from({ length: 3 }, () => job('other.test', log));
  const big = Array.from({ length: 4 }, () => job('mx.big.test', log));
  for (const j of [...slow, ...other, ...big]) d.add(j);
  const running = (dest: string) => log.filter((l) => l === `run ${dest}`).length;
  assert.equal(running('slow.test'), 1, 'its own concurrency (1), not the default initial window (2)');
  assert.equal(running('other.test'), 2, 'the default initial window');
  assert.equal(running('mx.big.test'), 3, 'a subdomain takes the ".big.test" entry');
  // Successes do not grow slow.test's window past its own maximum.
  slow[0]!.finish(false);
  await tick();
  slow[1]!.finish(false);
  await tick();
  assert.equal(running('slow.test'), 3);
  assert.equal(d.inFlight, 1 + 2 + 3, 'one slow.test job at a time');
});

test('destinationTable: exact keys first, then the nearest ".parent"; bracketed and LMTP keys only exactly', () => {
  const t = destinationTable({ '.example.org': { concurrency: 1 }, '.mx.example.org': { concurrency: 2 }, '[10.0.0.1]:25': { max_recipients: 5 }, 'Example.NET': { concurrency: 3 } });
  assert.equal(t('a.mx.example.org').concurrency, 2);
  assert.equal(t('b.example.org').concurrency, 1);
  assert.equal(t('example.org').concurrency, undefined, '".example.org" is its subdomains, as in [transport]');
  assert.equal(t('example.net').concurrency, 3, 'case-insensitive');
  assert.equal(t('[10.0.0.1]:25').max_recipients, 5);
  assert.deepEqual(t('[10.0.0.2]:25'), {});
});
