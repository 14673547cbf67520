// SPDX-License-Identifier: MIT
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BUSY, nextAcceptChange, type AcceptorState } from './acceptors.ts';

const w = (accepting: boolean, load: number | null = 0.1): AcceptorState => ({ accepting, load });

describe('nextAcceptChange', () => {
  test('with no worker accepting, the first live one starts', () => {
    assert.deepEqual(nextAcceptChange([w(false), w(false)]), { start: 0 });
    assert.deepEqual(nextAcceptChange([w(false, null)]), { start: 0 });
    assert.equal(nextAcceptChange([]), null);
  });

  test('one accepting worker that keeps up stays the only one', () => {
    assert.equal(nextAcceptChange([w(true, 0.4), w(false), w(false)]), null);
    assert.equal(nextAcceptChange([w(true, BUSY - 0.01), w(false)]), null);
  });

  test('all accepting workers busy: the next idle one starts, one at a time', () => {
    assert.deepEqual(nextAcceptChange([w(true, 0.95), w(false), w(false)]), { start: 1 });
    assert.deepEqual(nextAcceptChange([w(true, 0.9), w(true, 0.85), w(false)]), { start: 2 });
    // One of them not busy: no change.
    assert.equal(nextAcceptChange([w(true, 0.9), w(true, 0.6), w(false)]), null);
    // Nobody left to start.
    assert.equal(nextAcceptChange([w(true, 0.99), w(true, 0.99)]), null);
  });

  test('no change before every accepting worker has reported since the last one', () => {
    assert.equal(nextAcceptChange([w(true, 0.95), w(true, null), w(false)]), null);
    assert.equal(nextAcceptChange([w(true, 0.01), w(true, null)]), null);
  });

  test('when one worker fewer would carry the load at QUIET, the last accepting one stops, never the first', () => {
    assert.deepEqual(nextAcceptChange([w(true, 0.2), w(true, 0.2)]), { stop: 1 });
    assert.deepEqual(nextAcceptChange([w(true, 0.3), w(false), w(true, 0.3), w(true, 0.3)]), { stop: 3 });
    assert.equal(nextAcceptChange([w(true, 0.4), w(true, 0.3)]), null);
    assert.equal(nextAcceptChange([w(true, 0.01)]), null);
  });

  test('no flapping: after a change, the same total load shared by the new set of accepting workers changes nothing back', () => {
    fc.assert(fc.property(fc.array(fc.record({ accepting: fc.boolean(), load: fc.option(fc.double({ min: 0, max: 1, noNaN: true })) }), { maxLength: 8 }), (ws) => {
      const c = nextAcceptChange(ws);
      if (c === null || ws.every((x) => !x.accepting)) return;
      const total = ws.filter((x) => x.accepting).reduce((a, x) => a + (x.load ?? 0), 0);
      const after = ws.map((x, i) => ({ accepting: 'start' in c ? x.accepting || i === c.start : x.accepting && i !== c.stop, load: x.load }));
      const n = after.filter((x) => x.accepting).length;
      // Each accepting worker now carries an even share of the same total (capped: a worker is at most fully busy).
      const shared = after.map((x) => ({ accepting: x.accepting, load: x.accepting ? Math.min(1, total / n) : null }));
      const next = nextAcceptChange(shared);
      if ('start' in c) {
        assert.equal(ws[c.start]!.accepting, false);
        assert.ok(next === null || 'start' in next, `a start undone: ${JSON.stringify(next)}`);
      } else {
        assert.equal(ws[c.stop]!.accepting, true);
        assert.notEqual(c.stop, ws.findIndex((x) => x.accepting), 'the first accepting worker stays');
        assert.ok(next === null || 'stop' in next, `a stop undone: ${JSON.stringify(next)}`);
      }
    }));
  });
});
