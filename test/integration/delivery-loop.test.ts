// SPDX-License-Identifier: MIT
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startPalisade } from '../support/palisade.ts';
import { sendMessage } from '../support/smtp-client.ts';

test('a message that already carries Delivered-To: for its local recipient bounces with 5.4.6 instead of looping', async () => {
  const p = await startPalisade();
  try {
    const looped = await sendMessage(p.port, 'sender@mx.test', ['user@mx.test'], 'Delivered-To: user@mx.test\nSubject: loop\n\nbody\n');
    assert.equal(looped.code, 250);
    const qid = /queued as (\S+)/.exec(looped.text)![1];
    const line = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(line.status, 'bounced');
    assert.equal(line.dsn, '5.4.6');
    assert.equal(existsSync(join(p.dir, 'var/mail/user/new')), false, 'nothing delivered to the looping mailbox');
    // The DSN goes back to the sender (a local mailbox here).
    const dsn = await p.waitLog((l) => l.event === 'dsn' && l.qid === qid);
    assert.equal(dsn.action, 'failed');
    const ok = await sendMessage(p.port, 'sender@mx.test', ['user@mx.test'], 'Delivered-To: other@mx.test\nSubject: fine\n\nbody\n');
    const qid2 = /queued as (\S+)/.exec(ok.text)![1];
    assert.equal((await p.waitLog((l) => l.event === 'delivery' && l.qid === qid2)).status, 'sent');
  } finally {
    assert.equal(await p.stop(), 0);
  }
});
