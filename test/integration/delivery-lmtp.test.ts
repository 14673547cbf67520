// SPDX-License-Identifier: MIT
// LMTP delivery (RFC 2033) to a mailbox server: LHLO, and one reply per recipient after the final dot,
// so one recipient can be delivered while another is bounced or deferred in the same transaction.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startPalisade, type Running } from '../support/palisade.ts';
import { queueIdOf, sendMessage } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { maildir, parseDsn, waitMaildir } from '../support/mailbox.ts';

describe('LMTP delivery', () => {
  let lmtp: SmtpPeer;
  let sockDir: string;
  let unix: SmtpPeer;
  let p: Running;
  before(async () => {
    lmtp = await startSmtpPeer({ lmtp: true, hostname: 'mailstore.test' });
    sockDir = mkdtempSync(join(tmpdir(), 'palisade-lmtp-'));
    unix = await startSmtpPeer({ lmtp: true, hostname: 'unixstore.test', path: join(sockDir, 'lmtp') });
    p = await startPalisade({
      toml: `[transport]\n"lmtp.test" = "lmtp:127.0.0.1:${lmtp.port}"\n"unix.test" = "lmtp:unix:${join(sockDir, 'lmtp')}"\n` +
        '[queue]\nretry_min = "1s"\nretry_max = "1s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\ntimeout = "5s"\n',
    });
  });
  after(async () => {
    const code = await p?.stop();
    await Promise.all([lmtp?.close(), unix?.close()]);
    if (sockDir) rmSync(sockDir, { recursive: true, force: true });
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('the mailbox server is greeted with LHLO and gets the message once for the recipients it accepts', async () => {
    const qid = queueIdOf(await sendMessage(p.port, 'sender@client.test', ['one@lmtp.test'], 'Subject: lmtp\n\nto the store\n'));
    const [m] = await lmtp.waitMessages(1);
    assert.deepEqual(m!.rcpts.map((r) => r.address), ['one@lmtp.test']);
    assert.match(m!.data.toString('utf8'), /to the store/);
    assert.ok(lmtp.commands.some((c) => /^\d+> LHLO mx\.test$/.test(c)), 'said LHLO');
    assert.ok(!lmtp.commands.some((c) => /> (EHLO|HELO) /.test(c)), 'never EHLO');
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'sent');
    assert.equal(log.relay, `127.0.0.1:${lmtp.port}`);
  });

  test('a recipient refused after DATA is bounced while the other is delivered', async () => {
    lmtp.script.lmtpReplies['two@lmtp.test'] = '550 5.1.1 <two@lmtp.test>: mailbox does not exist';
    const before = lmtp.messages.length;
    const qid = queueIdOf(await sendMessage(p.port, 'lmtpsender@mx.test', ['one@lmtp.test', 'two@lmtp.test'], 'Subject: two\n\nfor both\n'));
    const msgs = await lmtp.waitMessages(before + 1);
    assert.deepEqual(msgs[before]!.rcpts.map((r) => r.address), ['one@lmtp.test']);
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    const outcome = p.logs().filter((l) => l.event === 'delivery' && l.qid === qid).map((l) => `${l.to} ${l.status} ${l.dsn}`).sort();
    assert.deepEqual(outcome, ['one@lmtp.test sent 2.0.0', 'two@lmtp.test bounced 5.1.1']);
    const [raw] = await waitMaildir(p.dir, 'lmtpsender');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.recipients.length, 1);
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; two@lmtp.test');
    assert.equal(dsn.recipients[0]!['action'], 'failed');
    assert.equal(dsn.recipients[0]!['status'], '5.1.1');
    assert.match(dsn.recipients[0]!['diagnostic-code']!, /mailbox does not exist/);
    delete lmtp.script.lmtpReplies['two@lmtp.test'];
  });

  test('a recipient deferred after DATA is retried alone; the other is not delivered twice', async () => {
    lmtp.script.lmtpReplies['full@lmtp.test'] = '452 4.2.2 <full@lmtp.test>: mailbox full';
    const before = lmtp.messages.length;
    const qid = queueIdOf(await sendMessage(p.port, 'lmtpretry@mx.test', ['ok@lmtp.test', 'full@lmtp.test'], 'Subject: quota\n\nretry one\n'));
    const first = await lmtp.waitMessages(before + 1);
    assert.deepEqual(first[before]!.rcpts.map((r) => r.address), ['ok@lmtp.test']);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.to === 'full@lmtp.test' && l.status === 'deferred');
    delete lmtp.script.lmtpReplies['full@lmtp.test'];
    const second = await lmtp.waitMessages(before + 2, 10_000);
    assert.deepEqual(second[before + 1]!.rcpts.map((r) => r.address), ['full@lmtp.test'], 'the retry carries only the deferred recipient');
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    await sleep(300);
    assert.equal(lmtp.messages.length, before + 2);
    assert.equal(maildir(p.dir, 'lmtpretry').length, 0, 'no DSN: nothing failed');
  });

  test('a mailbox server on a Unix socket ("lmtp:unix:/path") gets the message', async () => {
    const qid = queueIdOf(await sendMessage(p.port, 'sender@client.test', ['box@unix.test'], 'Subject: unix\n\nover a socket\n'));
    const [m] = await unix.waitMessages(1);
    assert.deepEqual(m!.rcpts.map((r) => r.address), ['box@unix.test']);
    assert.match(m!.data.toString('utf8'), /over a socket/);
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'sent');
    assert.equal(log.relay, `unix:${join(sockDir, 'lmtp')}`);
  });
});
