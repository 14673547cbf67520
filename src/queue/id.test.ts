// SPDX-License-Identifier: MIT
// Unit tests for queue IDs: shape, strict order within a generator, and the time they encode.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { createIdGenerator, idTime, QUEUE_ID } from './id.ts';

describe('queue IDs', () => {
  test('are 16 Crockford base32 characters matching QUEUE_ID', () => {
    const next = createIdGenerator();
    for (let i = 0; i < 100; i++) {
      const id = next();
      assert.equal(id.length, 16);
      assert.match(id, /^[0-9A-HJKMNP-TV-Z]{16}$/);
      assert.match(id, QUEUE_ID);
    }
  });

  test('QUEUE_ID refuses the letters Crockford base32 leaves out, lower case and other lengths', () => {
    for (const bad of ['0000000000000000I', '000000000000000I', '000000000000000L', '000000000000000O', '000000000000000U', '000000000000000a', '000000000000000', '../../etc/passwd']) {
      assert.doesNotMatch(bad, QUEUE_ID);
    }
  });

  test('strictly increase within a generator even with a frozen clock', () => {
    const next = createIdGenerator(() => 1_700_000_000_000);
    let prev = next();
    for (let i = 0; i < 10_000; i++) {
      const id = next();
      assert.ok(id > prev, `${id} after ${prev}`);
      prev = id;
    }
  });

  test('encode the clock time, readable back with idTime', () => {
    const t = Date.UTC(2026, 0, 2, 3, 4, 5, 678);
    assert.equal(idTime(createIdGenerator(() => t)()), t);
  });

  test('sort by time across generators', () => {
    const a = createIdGenerator(() => 1000)();
    const b = createIdGenerator(() => 1001)();
    assert.ok(a < b);
  });

  test('strictly increase for any sequence of clock readings, including a clock that goes back', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 2 ** 48 - 2 }), { minLength: 1, maxLength: 50 }), (times) => {
        let i = 0;
        const next = createIdGenerator(() => times[i++ % times.length]!);
        let prev = '';
        let maxT = -1;
        for (let k = 0; k < times.length; k++) {
          const id = next();
          assert.match(id, QUEUE_ID);
          assert.ok(id > prev, `${id} after ${prev}`);
          maxT = Math.max(maxT, times[k]!);
          // The time in an ID never runs backwards: it is the latest clock reading seen.
          assert.equal(idTime(id), maxT);
          prev = id;
        }
      }),
      { numRuns: 300 },
    );
  });

  test('idTime inverts the time part for any 48-bit millisecond value', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 48 - 1 }), (t) => {
        assert.equal(idTime(createIdGenerator(() => t)()), t);
      }),
      { numRuns: 300 },
    );
  });
});
