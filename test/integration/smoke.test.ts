// SPDX-License-Identifier: MIT
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPalisade } from '../support/palisade.ts';
import { sendMessage } from '../support/smtp-client.ts';

test('accepts a message for a local user, delivers it into the Maildir, and stops with exit 0 on SIGTERM', async () => {
  const p = await startPalisade();
  try {
    const r = await sendMessage(p.port, 'a@example.com', ['user@mx.test'], 'Subject: hi\n\nhello\n.leading dot\n');
    assert.equal(r.code, 250);
    const qid = /queued as ([0-9A-Z]{16})/.exec(r.text)![1];
    const line = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(line.status, 'sent');
    assert.equal(line.to, 'user@mx.test');
    const box = join(p.dir, 'var/mail/user/new');
    const files = readdirSync(box);
    assert.equal(files.length, 1);
    const text = readFileSync(join(box, files[0]!), 'utf8');
    assert.match(text, /^Return-Path: <a@example\.com>\nDelivered-To: user@mx\.test\nReceived: from client\.test/);
    assert.ok(text.includes(`id ${qid}`));
    assert.ok(text.endsWith('Subject: hi\n\nhello\n.leading dot\n'));
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    const list = await p.cli(['queue', 'list', '--json']);
    assert.equal(list.code, 0);
    assert.deepEqual(JSON.parse(list.stdout), []);
  } finally {
    assert.equal(await p.stop(), 0);
  }
});

test('SIGTERM the moment the ready line is out: master drains and exits 0 every time', async () => {
  for (let i = 0; i < 5; i++) {
    const p = await startPalisade({ workers: 1 });
    assert.equal(await p.stop(), 0, `stop ${i + 1}`);
  }
});
