// SPDX-License-Identifier: MIT
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade } from '../support/palisade.ts';
import { sendMessage } from '../support/smtp-client.ts';

test('accepts a message, lists it in the queue, and stops with exit 0 on SIGTERM', async () => {
  const p = await startPalisade();
  try {
    const r = await sendMessage(p.port, 'a@example.com', ['user@mx.test'], 'Subject: hi\n\nhello\n');
    assert.equal(r.code, 250);
    const qid = /queued as ([0-9A-Z]{16})/.exec(r.text)![1];
    const list = await p.cli(['queue', 'list', '--json']);
    assert.equal(list.code, 0);
    const entries = JSON.parse(list.stdout);
    assert.equal(entries.length, 1);
    assert.equal(entries[0].id, qid);
    assert.equal(entries[0].recipients[0].address, 'user@mx.test');
    assert.equal(entries[0].recipients[0].state, 'pending');
  } finally {
    assert.equal(await p.stop(), 0);
  }
});
