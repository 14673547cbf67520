// SPDX-License-Identifier: MIT
// Unit tests for an active message's recipients: loading them from the file's records, the queue lifetime,
// and which recipients each kind of DSN reports.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ParsedQueueFile, StateRecord } from '../queue/index.ts';
import type { DsnRecipient } from '../bounce/index.ts';
import { dsnLists, dsnRecipient, expire, messageOf, retryDelay } from './message.ts';

const ARRIVAL = Date.parse('2026-11-28T00:00:00Z');

function file(sender: string, rcpts: { address: string; notify?: ('SUCCESS' | 'FAILURE' | 'DELAY')[]; orcpt?: string }[], records: StateRecord[] = []): ParsedQueueFile {
  return {
    envelope: {
      id: '01ABCDEFGHJKMNPQ', arrival: new Date(ARRIVAL).toISOString(), sender, recipients: rcpts, smtputf8: false,
      client: { ip: '127.0.0.1', port: 1, helo: 'x', protocol: 'ESMTP' },
    },
    messageOffset: 100, messageLength: 10, sha256: '', eightBit: false, records,
  };
}

const at = '2026-11-28T01:00:00.000Z';

test('a loaded message resumes from each recipient\'s last record', () => {
  const m = messageOf('01ABCDEFGHJKMNPQ', file('a@x.test', [{ address: 'b@y.test' }, { address: 'c@y.test' }, { address: 'd@y.test' }], [
    { rcpt: 0, state: 'deferred', dsn: '4.4.1', reply: 'no answer', at, next: at, attempts: 1 },
    { rcpt: 0, state: 'sent', dsn: '2.0.0', reply: '250 ok', at },
    { rcpt: 1, state: 'deferred', dsn: '4.2.0', reply: '451 later', at, next: at, attempts: 3 },
  ]));
  assert.deepEqual(m.rcpts.map((r) => r.status), ['sent', 'deferred', 'pending']);
  assert.equal(m.rcpts[1]!.reply, '451 later');
  assert.equal(m.attempts, 3);
  assert.equal(m.arrival, ARRIVAL);
  assert.equal(m.rcpts.some((r) => r.report), false);
});

test('expiry bounces only the recipients still open, with 5.4.7 and their last reply, and records it', () => {
  const m = messageOf('01ABCDEFGHJKMNPQ', file('a@x.test', [{ address: 'b@y.test' }, { address: 'c@y.test' }, { address: 'd@y.test' }], [
    { rcpt: 0, state: 'sent', dsn: '2.0.0', reply: '250 ok', at },
    { rcpt: 1, state: 'deferred', dsn: '4.2.0', reply: '451 later', at, next: at, attempts: 3 },
  ]));
  const t = ARRIVAL + 5 * 86_400_000;
  const bounced = expire(m, t, '5d');
  assert.deepEqual(bounced.map((r) => r.address), ['c@y.test', 'd@y.test']);
  assert.equal(m.rcpts[0]!.status, 'sent');
  assert.equal(m.rcpts[1]!.dsn, '5.4.7');
  assert.equal(m.rcpts[1]!.reply, 'message expired after 5d in the queue (last reply: 451 later)');
  assert.equal(m.rcpts[2]!.reply, 'message expired after 5d in the queue');
  assert.deepEqual(m.unsaved.map((r) => [r.rcpt, r.state]), [[1, 'bounced'], [2, 'bounced']]);
});

test('DSN lists follow NOTIFY: failures by default, success only when asked, a delay once past the warning time', () => {
  const m = messageOf('01ABCDEFGHJKMNPQ', file('a@x.test', [
    { address: 'fail@y.test' }, { address: 'never@y.test', notify: [] }, { address: 'ok@y.test', notify: ['SUCCESS'] },
    { address: 'ok-quiet@y.test' }, { address: 'late@y.test' },
  ]));
  const [fail, never, ok, quiet, late] = m.rcpts;
  for (const r of [fail!, never!]) Object.assign(r, { status: 'bounced', dsn: '5.1.1', reply: '550 no', report: true });
  for (const r of [ok!, quiet!]) Object.assign(r, { status: 'sent', dsn: '2.0.0', reply: '250 ok', report: true });
  Object.assign(late!, { status: 'deferred', report: true });
  const early = dsnLists(m, ARRIVAL + 1000, 4 * 3_600_000);
  assert.deepEqual(early.failed.map((r) => r.address), ['fail@y.test']);
  assert.deepEqual(early.success.map((r) => r.address), ['ok@y.test']);
  assert.deepEqual(early.delayed, []);
  assert.deepEqual(dsnLists(m, ARRIVAL + 5 * 3_600_000, 4 * 3_600_000).delayed.map((r) => r.address), ['late@y.test']);
  assert.deepEqual(dsnLists(m, ARRIVAL + 5 * 3_600_000, 0).delayed, [], 'delay_warning 0: no delay DSN');
  m.warned = true;
  assert.deepEqual(dsnLists(m, ARRIVAL + 5 * 3_600_000, 4 * 3_600_000).delayed, [], 'one delay DSN per message');
});

test('a failed message from <> is reported (held) only once its other recipients are done, whatever NOTIFY says', () => {
  const m = messageOf('01ABCDEFGHJKMNPQ', file('', [{ address: 'a@y.test', notify: [] }, { address: 'b@y.test' }]));
  Object.assign(m.rcpts[0]!, { status: 'bounced', report: true });
  Object.assign(m.rcpts[1]!, { status: 'deferred', report: true });
  assert.deepEqual(dsnLists(m, ARRIVAL, 0).failed, []);
  Object.assign(m.rcpts[1]!, { status: 'sent' });
  assert.deepEqual(dsnLists(m, ARRIVAL, 0).failed.map((r) => r.address), ['a@y.test']);
});

test('a DSN recipient: relayed to a hop without DSN is "relayed"; a delay carries its retry limit; local outcomes name no host', () => {
  const m = messageOf('01ABCDEFGHJKMNPQ', file('a@x.test', [{ address: 'b@y.test' }]));
  const r = m.rcpts[0]!;
  Object.assign(r, { status: 'sent', dsn: '', reply: '250 ok', relay: 'mx.y.test[192.0.2.1]:25', relayed: 'plain', at: ARRIVAL + 5 });
  const [d] = dsnRecipient(r, 'delivered', ARRIVAL + 9, ARRIVAL + 100) as [DsnRecipient];
  assert.equal(d.action, 'relayed');
  assert.equal(d.status, '2.0.0');
  assert.equal(d.remoteMta, 'mx.y.test[192.0.2.1]:25');
  assert.equal(d.lastAttempt.getTime(), ARRIVAL + 5);
  assert.equal(d.willRetryUntil, undefined);
  Object.assign(r, { status: 'deferred', dsn: '', relay: 'local', relayed: undefined });
  const [late] = dsnRecipient(r, 'delayed', ARRIVAL + 9, ARRIVAL + 100) as [DsnRecipient];
  assert.equal(late.status, '4.0.0');
  assert.equal(late.remoteMta, '');
  assert.equal(late.willRetryUntil?.getTime(), ARRIVAL + 100);
});

test('an alias that bounced for some targets is reported as those targets, expanded from it; the record keeps them', () => {
  const targets = [
    { address: 'ghost@mx.test', dsn: '5.1.1', reply: 'user unknown: ghost@mx.test' },
    { address: 'team@mx.test', dsn: '5.7.1', reply: 'delivery to commands is disabled' },
  ];
  const m = messageOf('01ABCDEFGHJKMNPQ', file('a@x.test', [{ address: 'team@mx.test' }, { address: 'list@mx.test', orcpt: 'rfc822;List@MX.test' }], [
    { rcpt: 0, state: 'bounced', dsn: '5.1.1', reply: 'user unknown: ghost@mx.test; ...', at, targets },
    { rcpt: 1, state: 'bounced', dsn: '5.1.1', reply: 'x', at, targets: targets.slice(0, 1) },
  ]));
  const d = dsnRecipient(m.rcpts[0]!, 'failed', ARRIVAL, ARRIVAL);
  assert.deepEqual(d.map((x) => [x.address, x.orcpt, x.expandedFrom, x.status, x.diagnostic]), [
    ['ghost@mx.test', 'rfc822;team@mx.test', 'team@mx.test', '5.1.1', 'user unknown: ghost@mx.test'],
    // The alias's own failure (a command of it): the recipient itself, not expanded from anything.
    ['team@mx.test', undefined, undefined, '5.7.1', 'delivery to commands is disabled'],
  ]);
  assert.equal(dsnRecipient(m.rcpts[1]!, 'failed', ARRIVAL, ARRIVAL)[0]!.orcpt, 'rfc822;List@MX.test', 'the client\'s ORCPT wins');
  // Expiry replaces the outcome: the DSN reports the recipient itself, 5.4.7.
  m.rcpts[0]!.status = 'deferred';
  expire(m, ARRIVAL + 1, '5d');
  assert.deepEqual(dsnRecipient(m.rcpts[0]!, 'failed', ARRIVAL, ARRIVAL).map((x) => [x.address, x.status]), [['team@mx.test', '5.4.7']]);
  const utf8 = messageOf('01ABCDEFGHJKMNPQ', file('a@x.test', [{ address: 'équipe@mx.test' }], [{ rcpt: 0, state: 'bounced', dsn: '5.1.1', reply: 'x', at, targets: targets.slice(0, 1) }]));
  assert.equal(dsnRecipient(utf8.rcpts[0]!, 'failed', ARRIVAL, ARRIVAL)[0]!.orcpt, 'utf-8;équipe@mx.test');
});

describe('retryDelay', () => {
  const MIN = 60_000;
  const MAX = 3_600_000;
  const round = (attempts: number, agentLost = false, deferredOtherwise = false) => ({ attempts, agentLost, deferredOtherwise });

  test('the backoff doubles from retry_min up to retry_max', () => {
    assert.deepEqual([1, 2, 3, 7, 40].map((a) => retryDelay(round(a), false, MIN, MAX).delay), [MIN, 2 * MIN, 4 * MIN, MAX, MAX]);
  });

  test('a first attempt lost with its delivery agent is made again at once, once', () => {
    assert.deepEqual(retryDelay(round(1, true), false, MIN, MAX), { delay: 0, prompt: true });
    assert.deepEqual(retryDelay(round(1, true), true, MIN, MAX), { delay: MIN, prompt: false }, 'already done once');
    assert.deepEqual(retryDelay(round(2, true), false, MIN, MAX), { delay: 2 * MIN, prompt: false }, 'a second attempt backs off');
  });

  test('not when a server (or a dead destination) deferred a recipient in the same round', () => {
    assert.deepEqual(retryDelay(round(1, true, true), false, MIN, MAX), { delay: MIN, prompt: false });
    assert.deepEqual(retryDelay(round(1, false, true), false, MIN, MAX), { delay: MIN, prompt: false });
  });
});
