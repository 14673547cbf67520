// SPDX-License-Identifier: MIT
// Unit tests for the orphaned-job bookkeeping: a message is released once no agent runs a job of it any more.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Orphans } from './orphans.ts';

test('a message is released when its last orphaned job ends, over jobs on several agents', () => {
  const released: string[] = [];
  const o = new Orphans<string>((qid) => released.push(qid));
  o.reported('a1', ['Q1', 'Q1', 'Q2']);
  o.reported('a2', ['Q1']);
  assert.deepEqual(o.busy().sort(), ['Q1', 'Q2']);
  o.ended('a1', 'Q1');
  o.ended('a1', 'Q2');
  assert.deepEqual(released, ['Q2']);
  o.ended('a1', 'Q1');
  assert.deepEqual(released, ['Q2'], 'Q1 still has a job on a2');
  o.ended('a1', 'Q1');
  assert.deepEqual(released, ['Q2'], 'a job not reported is not counted');
  o.ended('a2', 'Q1');
  assert.deepEqual(released, ['Q2', 'Q1']);
  assert.deepEqual(o.busy(), []);
});

test('an agent that dies releases its jobs', () => {
  const released: string[] = [];
  const o = new Orphans<string>((qid) => released.push(qid));
  o.reported('a1', ['Q1', 'Q2']);
  o.reported('a2', ['Q2']);
  o.gone('a1');
  assert.deepEqual(released, ['Q1']);
  assert.deepEqual(o.busy(), ['Q2']);
});
