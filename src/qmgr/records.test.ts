// SPDX-License-Identifier: MIT
// Unit tests for reading state records at load: the last record per recipient wins (a sent one stays), and
// the backoff exponent survives a restart (untried rounds excluded; older files counted by rounds).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readRecords } from './records.ts';
import type { StateRecord } from '../queue/index.ts';

const rec = (rcpt: number, state: StateRecord['state'], next?: string, attempts?: number): StateRecord => ({
  rcpt, state, dsn: '4.4.1', reply: 'x', at: '2026-11-28T00:00:00Z', ...(next ? { next } : {}), ...(attempts !== undefined ? { attempts } : {}),
});

test('the attempts recorded with the last deferral are the backoff exponent, not the number of deferred rounds', () => {
  // Two tried rounds, then a round a dead destination deferred at once (its records keep attempts 2).
  const r = readRecords([rec(0, 'deferred', 't1', 1), rec(1, 'deferred', 't1', 1), rec(0, 'deferred', 't2', 2), rec(0, 'deferred', 't3', 2)]);
  assert.equal(r.attempts, 2);
  assert.equal(r.last.get(0)!.next, 't3');
  assert.equal(r.last.get(1)!.next, 't1');
});

test('files without attempts: one per distinct retry time, whatever the number of recipients', () => {
  const r = readRecords([rec(0, 'deferred', 't1'), rec(1, 'deferred', 't1'), rec(2, 'deferred', 't1'), rec(0, 'deferred', 't2')]);
  assert.equal(r.attempts, 2);
});

test('sent and bounced records end a recipient; a warned record is remembered', () => {
  const r = readRecords([rec(0, 'deferred', 't1', 1), rec(0, 'sent'), { warned: true, at: 'x' } as unknown as StateRecord]);
  assert.equal(r.last.get(0)!.state, 'sent');
  assert.equal(r.warned, true);
  assert.equal(readRecords([]).attempts, 0);
});

test('a recipient once sent stays sent: a later deferral (its agent died after marking it) does not undo it', () => {
  const r = readRecords([rec(0, 'sent'), rec(0, 'deferred', 't1', 1), rec(1, 'bounced'), rec(1, 'deferred', 't1', 1)]);
  assert.equal(r.last.get(0)!.state, 'sent');
  assert.equal(r.last.get(1)!.state, 'deferred', 'a bounce can be taken back (its DSN could not be sent)');
});

test('a later sent record replaces an agent\'s mark: the success DSN it owed, once sent, is not owed again', () => {
  const mark: StateRecord = { ...rec(0, 'sent'), success_owed: true, relayed: 'plain' };
  const r = readRecords([mark, rec(1, 'deferred', 't1', 1), rec(0, 'sent'), rec(0, 'deferred', 't2', 2)]);
  assert.equal(r.last.get(0)!.state, 'sent');
  assert.equal(r.last.get(0)!.success_owed, undefined);
  assert.equal(r.attempts, 2, 'the deferral after sent still counts toward the backoff');
});
