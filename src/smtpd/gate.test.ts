// SPDX-License-Identifier: MIT
import { test, describe, beforeEach, afterEach, mock } from 'node:test';
import assert from 'node:assert/strict';
import { MasterGate, type GateNotice } from './gate.ts';

const BATCH_MS = 5;

// A gate whose notices to master are recorded; timers are mocked, so batches go out only when the test ticks.
function gate(opts: { perIpLimits?: boolean; accepting?: boolean; connected?: boolean } = {}) {
  const sent: GateNotice[] = [];
  const state = { accepting: opts.accepting ?? true, connected: opts.connected ?? true };
  const g = new MasterGate({
    send: (m) => sent.push(m),
    connected: () => state.connected,
    accepting: () => state.accepting,
    perIpLimits: opts.perIpLimits ?? false,
    batchMs: BATCH_MS,
  });
  const sessions = () => sent.filter((m) => m.type === 'sessions');
  return { g, sent, state, sessions };
}

// The end of this event-loop turn (setImmediate), then the batch time.
const endOfTurn = () => mock.timers.tick(0);
const batchTime = () => mock.timers.tick(BATCH_MS);

describe('MasterGate: an smtpd worker\'s side of the session count', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'setImmediate'] }));
  afterEach(() => mock.timers.reset());

  test('without a lease, admission asks master and takes its verdict', async () => {
    const { g, sent } = gate();
    const v = g.admit('192.0.2.1', false);
    assert.ok(v instanceof Promise);
    assert.deepEqual(sent, [{ type: 'admit', id: 1, ip: '192.0.2.1', exempt: false }]);
    assert.equal(g.handle({ type: 'admit', id: 1, verdict: 'ip' }), true);
    assert.equal(await v, 'ip');
  });

  test('an accepting worker asks for slots once until master leases them; one that does not accept never asks', () => {
    const { g, sessions } = gate();
    g.askSlots();
    endOfTurn();
    assert.deepEqual(sessions(), [{ type: 'sessions', open: [], release: [], kept: [], returned: 0, revoked: false, want: true }]);
    g.askSlots();
    endOfTurn();
    assert.equal(sessions().length, 1, 'asked already, nothing else to say');

    const idle = gate({ accepting: false });
    idle.g.askSlots();
    endOfTurn();
    assert.deepEqual(idle.sent, []);
  });

  test('with a lease, clients are admitted at once and master hears of them in one batch', () => {
    const { g, sent, sessions } = gate();
    g.handle({ type: 'lease', n: 8, chunk: 8 });
    assert.equal(g.admit('192.0.2.1', false), 'ok');
    assert.equal(g.admit('192.0.2.2', false), 'ok');
    assert.equal(g.admit('192.0.2.3', false), 'ok');
    endOfTurn();
    assert.deepEqual(sent, [], 'opens wait for the batch');
    batchTime();
    assert.deepEqual(sessions(), [{ type: 'sessions', open: ['192.0.2.1', '192.0.2.2', '192.0.2.3'], release: [], kept: [], returned: 0, revoked: false, want: false }]);
  });

  test('the lease runs out: the next client is asked about, and more slots are wanted at half the chunk', () => {
    const { g, sent, sessions } = gate();
    g.handle({ type: 'lease', n: 2, chunk: 2 });
    assert.equal(g.admit('192.0.2.1', false), 'ok');
    assert.equal(g.admit('192.0.2.2', false), 'ok');
    assert.ok(g.admit('192.0.2.3', false) instanceof Promise);
    assert.deepEqual(sent[0], { type: 'admit', id: 1, ip: '192.0.2.3', exempt: false });
    batchTime();
    assert.deepEqual(sessions(), [{ type: 'sessions', open: ['192.0.2.1', '192.0.2.2'], release: [], kept: [], returned: 0, revoked: false, want: true }]);
  });

  test('a leased session that ends keeps its slot (batched) up to the lease size; beyond it the slot goes back at the end of the turn', () => {
    const { g, sessions } = gate();
    g.handle({ type: 'lease', n: 1, chunk: 1 });
    assert.equal(g.admit('192.0.2.1', false), 'ok');
    g.release('192.0.2.1', true);
    endOfTurn();
    assert.deepEqual(sessions(), [], 'a kept slot waits for the batch');
    assert.equal(g.admit('192.0.2.2', false), 'ok', 'the kept slot admits the next client at once');
    g.release('192.0.2.2', true);
    batchTime();
    assert.deepEqual(sessions(), [{ type: 'sessions', open: ['192.0.2.1', '192.0.2.2'], release: [], kept: ['192.0.2.1', '192.0.2.2'], returned: 0, revoked: false, want: false }]);
    // The budget is back at the lease size (1 of 1): one more leased session's slot goes back to master, at
    // the end of the turn.
    const third = g.admit('192.0.2.3', false);
    assert.equal(third, 'ok');
    g.handle({ type: 'lease', n: 1, chunk: 1 }); // now 1 of 1 with a session open on an earlier slot
    g.release('192.0.2.3', true);
    endOfTurn();
    assert.deepEqual(sessions().at(-1), { type: 'sessions', open: ['192.0.2.3'], release: ['192.0.2.3'], kept: [], returned: 0, revoked: false, want: false });
  });

  test('leases add up; each lease clears the ask so the next shortage asks again', () => {
    const { g, sessions } = gate();
    g.askSlots();
    endOfTurn();
    g.handle({ type: 'lease', n: 2, chunk: 4 });
    g.handle({ type: 'lease', n: 2, chunk: 4 });
    for (const ip of ['192.0.2.1', '192.0.2.2', '192.0.2.3', '192.0.2.4']) assert.equal(g.admit(ip, false), 'ok');
    assert.ok(g.admit('192.0.2.5', false) instanceof Promise, 'four slots, four sessions');
    batchTime();
    assert.equal(sessions().length, 2);
    assert.equal((sessions()[1] as { want: boolean }).want, true, 'asked again after the lease answered the first ask');
  });

  test('a batch goes once: the timer it replaced sends nothing more, and returned slots are not counted twice', () => {
    const { g, sessions } = gate();
    g.handle({ type: 'lease', n: 8, chunk: 8 });
    g.admit('192.0.2.1', false); // batched (timer)
    g.release('198.51.100.7', false); // urgent: goes at the end of the turn, with the open
    endOfTurn();
    assert.equal(sessions().length, 1);
    batchTime();
    batchTime();
    assert.equal(sessions().length, 1, 'the batch timer was cleared');
    g.handle({ type: 'revoke' });
    g.release('198.51.100.8', false);
    endOfTurn();
    assert.deepEqual(sessions().slice(1).map((m) => m.type === 'sessions' && [m.returned, m.revoked]), [[7, true], [0, false]]);
  });

  test('an end-of-turn flush cancels the batch timer: a later open waits its own full batch time', () => {
    const { g, sessions } = gate();
    g.handle({ type: 'lease', n: 8, chunk: 8 });
    g.admit('192.0.2.1', false);
    g.release('198.51.100.7', false);
    endOfTurn();
    assert.equal(sessions().length, 1);
    mock.timers.tick(BATCH_MS - 2);
    g.admit('192.0.2.2', false);
    mock.timers.tick(2);
    assert.equal(sessions().length, 1, 'not sent on the first open\'s timer');
    mock.timers.tick(BATCH_MS - 2);
    assert.deepEqual((sessions()[1] as { open: string[] }).open, ['192.0.2.2']);
  });

  test('slots returned while master could not be told are all returned later', () => {
    const { g, sessions, state } = gate();
    state.connected = false;
    g.handle({ type: 'lease', n: 3, chunk: 4 });
    g.handle({ type: 'revoke' });
    g.handle({ type: 'lease', n: 2, chunk: 4 });
    state.connected = true;
    g.handle({ type: 'revoke' });
    assert.deepEqual(sessions().map((m) => m.type === 'sessions' && m.returned), [5]);
  });

  test('with per-IP limits only exempt clients are admitted on a lease; the others are asked about', () => {
    const { g, sent } = gate({ perIpLimits: true });
    g.handle({ type: 'lease', n: 4, chunk: 4 });
    assert.ok(g.admit('192.0.2.1', false) instanceof Promise);
    assert.deepEqual(sent, [{ type: 'admit', id: 1, ip: '192.0.2.1', exempt: false }]);
    assert.equal(g.admit('127.0.0.1', true), 'ok');
  });

  test('a revoke returns the unused slots at once; after it sessions are asked about and nothing is kept', () => {
    const { g, sent, sessions } = gate();
    g.handle({ type: 'lease', n: 3, chunk: 3 });
    assert.equal(g.admit('192.0.2.1', false), 'ok');
    g.handle({ type: 'revoke' });
    assert.deepEqual(sessions(), [{ type: 'sessions', open: ['192.0.2.1'], release: [], kept: [], returned: 2, revoked: true, want: true }]);
    assert.ok(g.admit('192.0.2.2', false) instanceof Promise);
    g.release('192.0.2.1', true);
    endOfTurn();
    assert.deepEqual((sent.at(-1) as { release: string[]; kept: string[] }).release, ['192.0.2.1']);
    assert.deepEqual((sent.at(-1) as { release: string[]; kept: string[] }).kept, []);
  });

  test('with master gone nothing is sent', () => {
    const { g, sent, state } = gate();
    g.handle({ type: 'lease', n: 2, chunk: 2 });
    g.admit('192.0.2.1', false);
    state.connected = false;
    batchTime();
    assert.deepEqual(sent, []);
  });

  test('message and recipient counts go to master; its answer decides', async () => {
    const { g, sent } = gate();
    const a = g.message('192.0.2.1', false);
    const b = g.message('192.0.2.1', false, 'recipient');
    assert.deepEqual(sent, [
      { type: 'message', id: 1, ip: '192.0.2.1', exempt: false, kind: 'message' },
      { type: 'message', id: 2, ip: '192.0.2.1', exempt: false, kind: 'recipient' },
    ]);
    g.handle({ type: 'message', id: 2, ok: false });
    g.handle({ type: 'message', id: 1, ok: true });
    assert.equal(await a, true);
    assert.equal(await b, false);
  });

  test('flags from master; other messages are not the gate\'s', () => {
    const { g } = gate();
    assert.equal(g.handle({ type: 'flags', stress: true, diskLow: false }), true);
    assert.deepEqual(g.flags, { stress: true, diskLow: false });
    assert.equal(g.handle({ type: 'drain' }), false);
  });
});
