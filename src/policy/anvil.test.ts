// SPDX-License-Identifier: MIT
// Unit tests for the anvil: session counts, per-IP limits, rates, and the session slots leased to workers.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Anvil, type AnvilLimits } from './anvil.ts';

const LIMITS: AnvilLimits = {
  maxSessions: 10, maxSessionsPerIp: 3, connectionRatePerIp: 0, messageRatePerIp: 0, recipientRatePerIp: 0, stressAt: 1,
};

test('counts sessions globally and per IP; trusted clients skip the per-IP limit', () => {
  const a = new Anvil(LIMITS);
  for (let i = 0; i < 3; i++) assert.equal(a.admit('192.0.2.1', false), 'ok');
  assert.equal(a.admit('192.0.2.1', false), 'ip');
  assert.equal(a.admit('192.0.2.1', true), 'ok');
  // The trusted session counts for the address too: two must end before an untrusted one fits again.
  a.release('192.0.2.1');
  assert.equal(a.admit('192.0.2.1', false), 'ip');
  a.release('192.0.2.1');
  assert.equal(a.admit('192.0.2.1', false), 'ok');
  for (let i = 0; i < 7; i++) assert.equal(a.admit(`198.51.100.${i}`, false), 'ok');
  assert.equal(a.sessions, 10);
  assert.equal(a.admit('203.0.113.9', true), 'global');
});

test('a connection rate per IP refuses with "rate" past the limit', () => {
  let now = 1_000_000;
  const a = new Anvil({ ...LIMITS, maxSessionsPerIp: 0, connectionRatePerIp: 2 }, () => now);
  assert.equal(a.admit('192.0.2.1', false), 'ok');
  assert.equal(a.admit('192.0.2.1', false), 'ok');
  assert.equal(a.admit('192.0.2.1', false), 'rate');
  now += 61_000;
  assert.equal(a.admit('192.0.2.1', false), 'ok');
});

test('no leases when max_sessions is too small to split', () => {
  const a = new Anvil({ ...LIMITS, maxSessions: 5 });
  assert.equal(a.leaseChunk(1), 0);
  assert.equal(new Anvil({ ...LIMITS, maxSessions: 200 }).leaseChunk(2), 12);
});

test('leased slots count against the limit until used or returned', () => {
  const a = new Anvil({ ...LIMITS, maxSessions: 64 });
  const chunk = a.leaseChunk(2);
  assert.equal(chunk, 4);
  assert.equal(a.grant(0, chunk), 4);
  assert.equal(a.grant(0, chunk), 4);
  // 8 leased: the sync path can fill only the other 56.
  for (let i = 0; i < 56; i++) assert.equal(a.admit(`10.0.0.${i}`, true), 'ok');
  assert.equal(a.admit('10.0.1.1', true), 'global');
  // Using a leased slot turns it into a counted session; returning one frees it for everybody.
  a.openLeased('10.0.2.1');
  assert.equal(a.sessions, 57);
  a.unlease(7);
  assert.equal(a.admit('10.0.1.1', true), 'ok');
});

test('a worker that keeps the slot of a session that ended holds it as leased again: nobody else gets it', () => {
  const a = new Anvil({ ...LIMITS, maxSessions: 64 });
  assert.equal(a.grant(0, a.leaseChunk(2)), 4);
  for (let i = 0; i < 60; i++) assert.equal(a.admit(`10.0.0.${i}`, true), 'ok');
  a.openLeased('10.0.2.1');
  assert.equal(a.sessions, 61);
  // The session ends and its worker keeps the slot: one session fewer, the slot leased again.
  a.relet(1);
  a.release('10.0.2.1');
  assert.equal(a.sessions, 60);
  assert.equal(a.admit('10.0.1.1', true), 'global', '60 sessions + 4 leased slots: full');
  a.unlease(4);
  assert.equal(a.admit('10.0.1.1', true), 'ok');
});

test('grants stop at half of max_sessions, and past three quarters leases are called back', () => {
  const a = new Anvil({ ...LIMITS, maxSessions: 80 });
  const chunk = a.leaseChunk(1);
  assert.equal(chunk, 10);
  assert.equal(a.grant(0, chunk), 10);
  assert.equal(a.grant(10, chunk), 0, 'a worker holding a full chunk gets nothing more');
  for (let i = 0; i < 28; i++) a.admit(`10.0.0.${i}`, true);
  // 28 sessions + 10 leased = 38: room for 2 more slots below 40.
  assert.equal(a.grant(0, chunk), 2);
  assert.equal(a.overLeased, false);
  for (let i = 0; i < 20; i++) a.admit(`10.0.1.${i}`, true);
  // 48 + 12 = 60 = three quarters: not yet; one more session tips it.
  assert.equal(a.overLeased, false);
  a.admit('10.0.2.1', true);
  assert.equal(a.overLeased, true);
  a.unlease(12);
  assert.equal(a.overLeased, false);
});

test('property: sessions plus leased slots never exceed max_sessions, whatever the order of events', () => {
  type Ev = { k: 'admit' | 'grant' | 'open' | 'release' | 'keep' | 'return'; n: number };
  const ev = fc.record({ k: fc.constantFrom('admit', 'grant', 'open', 'release', 'keep', 'return') as fc.Arbitrary<Ev['k']>, n: fc.integer({ min: 0, max: 3 }) });
  fc.assert(fc.property(fc.integer({ min: 1, max: 100 }), fc.array(ev, { maxLength: 300 }), (max, events) => {
    const a = new Anvil({ ...LIMITS, maxSessions: max, maxSessionsPerIp: 0 });
    // One worker's lease size (leases from max_sessions 16 on): the four workers below all take chunks of it.
    const chunk = a.leaseChunk(1);
    const held = [0, 0, 0, 0];
    const open: string[] = [];
    // Sessions opened on a leased slot, with their worker (they may end keeping the slot).
    const leasedOpen: { ip: string; w: number }[] = [];
    let k = 0;
    for (const e of events) {
      const w = e.n;
      if (e.k === 'admit') {
        if (a.admit(`10.0.${k}.1`, false) === 'ok') open.push(`10.0.${k}.1`);
      } else if (e.k === 'grant' && chunk > 0) held[w]! += a.grant(held[w]!, chunk);
      else if (e.k === 'open' && held[w]! > 0) {
        held[w]!--;
        a.openLeased(`10.1.${k}.1`);
        open.push(`10.1.${k}.1`);
        leasedOpen.push({ ip: `10.1.${k}.1`, w });
      } else if (e.k === 'release' && open.length > 0) {
        const ip = open.shift()!;
        a.release(ip);
        const i = leasedOpen.findIndex((s) => s.ip === ip);
        if (i >= 0) leasedOpen.splice(i, 1);
      } else if (e.k === 'keep' && leasedOpen.length > 0) {
        const s = leasedOpen.shift()!;
        open.splice(open.indexOf(s.ip), 1);
        a.relet(1);
        a.release(s.ip);
        held[s.w]!++;
      }
      else if (e.k === 'return') {
        a.unlease(held[w]!);
        held[w] = 0;
      }
      k++;
      assert.ok(a.sessions + held.reduce((x, y) => x + y, 0) <= max, `${a.sessions} + ${held} > ${max}`);
      assert.equal(a.sessions, open.length);
      assert.equal(a.leasedSlots, held.reduce((x, y) => x + y, 0), 'leased slots as the workers hold them');
    }
  }), { numRuns: 300 });
});
