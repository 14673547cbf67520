// SPDX-License-Identifier: MIT
// Palisade → a real Dovecot LMTP server, over TCP and over its Unix socket: a known user's copy lands in
// Dovecot's Maildir unchanged behind Palisade's Received:, and the recipient Dovecot refuses (550 5.1.1 at
// RCPT) comes back to the sender as an RFC 3464 failure DSN, read with postal-mime.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import PostalMime from 'postal-mime';
import { startPalisade, type Running } from '../../support/palisade.ts';
import { waitFor } from '../../support/net.ts';
import { removeDir, requirePeers, skipWithoutPeers, tempDir } from '../../support/peers.ts';
import { DOVECOT, startDovecotLmtp } from '../../support/dovecot-lmtp.ts';
import { sendMessage } from '../../support/smtp-client.ts';

const skip = skipWithoutPeers(DOVECOT);

const DATE = '[A-Z][a-z]{2}, \\d{1,2} [A-Z][a-z]{2} \\d{4} \\d{2}:\\d{2}:\\d{2} \\+0000';

function message(to: string, id: string): string {
  return [
    'From: Sender <sender@mx.test>',
    `To: ${to}`,
    `Subject: e2e lmtp ${id}`,
    `Message-ID: <${id}@mx.test>`,
    'Date: Sat, 28 Nov 2026 01:00:00 +0000',
    '',
    'Hello Dovecot.',
    '.a leading dot',
    '',
    'bye',
    '',
  ].join('\r\n');
}

/** Sends one message to Palisade; returns the queue ID of the 250 reply. */
async function send(p: Running, from: string, rcpts: readonly string[], msg: string): Promise<string> {
  const r = await sendMessage(p.port, from, [...rcpts], msg);
  assert.equal(r.code, 250, r.lines.join(' | '));
  const qid = /queued as ([0-9A-Z]{16})/.exec(r.text)?.[1];
  assert.ok(qid !== undefined, r.text);
  return qid;
}

/**
 * Dovecot's Maildir file: its trace fields (Delivered-To: only when its transaction had one recipient), then
 * Palisade's Received: (no "for" clause: Palisade's transaction had two recipients), then `msg` (Dovecot
 * stores LF line ends).
 */
function assertDovecotCopy(text: string, user: string | null, qid: string, msg: string): void {
  const head = new RegExp(
    '^Return-Path: <sender@mx\\.test>\\n' +
      (user === null ? '' : `Delivered-To: ${user.replace(/\./g, '\\.')}\\n`) +
      'Received: from mx\\.test(?: \\([^)]*\\))?\\n(?:\\t[^\\n]*\\n)+?' +
      `Received: from client\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\n\\tby mx\\.test \\(Palisade\\) with ESMTP id ${qid};\\n\\t${DATE}\\n`,
  ).exec(text);
  assert.ok(head !== null, `trace fields in Dovecot's copy are not as expected:\n${text.slice(0, 700)}`);
  assert.equal(text.slice(head[0].length), msg.replace(/\r\n/g, '\n'), 'the message in Dovecot\'s Maildir is ours');
}

function maildir(p: Running, user: string): string[] {
  const nd = join(p.dir, 'var/mail', user, 'new');
  try {
    return readdirSync(nd).sort().map((f) => join(nd, f));
  } catch {
    return [];
  }
}

test('LMTP to Dovecot over TCP: the known user gets the message, the unknown one bounces back to the sender with a DSN', { skip }, async () => {
  requirePeers(DOVECOT);
  const dovecot = await startDovecotLmtp(['alice', 'bob']);
  const dir = tempDir('palisade-e2e-lmtp-');
  try {
    const p = await startPalisade({ dir, toml: `[transport]\n"mbox.test" = "lmtp:127.0.0.1:${dovecot.port}"\n` });
    try {
      const msg = message('alice@mbox.test, ghost@mbox.test', 'e2e-lmtp-tcp');
      const qid = await send(p, 'sender@mx.test', ['alice@mbox.test', 'ghost@mbox.test'], msg);
      const alice = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.to === 'alice@mbox.test', 30_000);
      const ghost = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.to === 'ghost@mbox.test', 30_000);
      assert.equal(alice.status, 'sent', JSON.stringify(alice));
      assert.equal(alice.relay, `127.0.0.1:${dovecot.port}`);
      assert.equal(alice.dsn, '2.0.0');
      assert.match(String(alice.reply), /^250 2\.0\.0 <alice@mbox\.test> .*Saved/);
      assert.equal(ghost.status, 'bounced', JSON.stringify(ghost));
      assert.equal(ghost.dsn, '5.1.1');
      assert.match(String(ghost.reply), /^550 5\.1\.1 /);

      // alice's copy: a readable file in Dovecot's Maildir.
      const files = await waitFor('alice\'s copy in Dovecot\'s Maildir', () => (dovecot.delivered('alice').length > 0 ? dovecot.delivered('alice') : undefined));
      assert.equal(files.length, 1);
      // Two recipients in Palisade's transaction, one in Dovecot's (ghost was refused at RCPT).
      assertDovecotCopy(readFileSync(files[0]!, 'latin1'), 'alice@mbox.test', qid, msg);
      assert.deepEqual(dovecot.delivered('ghost'), []);

      // The DSN for ghost goes to the sender, a local mailbox of Palisade.
      const dsnLine = await p.waitLog((l) => l.event === 'dsn' && l.qid === qid, 20_000);
      assert.equal(dsnLine.action, 'failed');
      const dsnDelivery = await p.waitLog((l) => l.event === 'delivery' && l.qid === dsnLine.dsn_qid, 20_000);
      assert.equal(dsnDelivery.status, 'sent', JSON.stringify(dsnDelivery));
      assert.equal(dsnDelivery.to, 'sender@mx.test');
      const boxes = await waitFor('the DSN in the sender\'s Maildir', () => (maildir(p, 'sender').length > 0 ? maildir(p, 'sender') : undefined));
      assert.equal(boxes.length, 1, 'exactly one DSN');
      const raw = readFileSync(boxes[0]!);
      assert.match(raw.toString('latin1'), /^Return-Path: <>\nDelivered-To: sender@mx\.test\n/, 'the DSN comes from the null sender');
      const email = await PostalMime.parse(raw, { attachmentEncoding: 'utf8', forceRfc822Attachments: true });
      assert.equal(email.from?.address, 'MAILER-DAEMON@mx.test');
      assert.deepEqual(email.to?.map((a) => a.address), ['sender@mx.test']);
      assert.equal(email.subject, 'Undelivered Mail Returned to Sender');
      const ct = email.headers.find((h) => h.key === 'content-type')?.value ?? '';
      assert.match(ct, /^multipart\/report;\s*report-type=delivery-status/);
      assert.match(email.text ?? '', /<ghost@mbox\.test>: failed/);
      assert.doesNotMatch(email.text ?? '', /alice@mbox\.test/, 'the delivered recipient is not reported as failed');
      const status = email.attachments.find((a) => a.mimeType === 'message/delivery-status');
      assert.ok(status !== undefined, `no message/delivery-status part: ${email.attachments.map((a) => a.mimeType).join(', ')}`);
      const report = String(status.content);
      assert.match(report, /^Reporting-MTA: dns; mx\.test\r?$/m);
      assert.match(report, new RegExp(`^X-Palisade-Queue-ID: ${qid}\\r?$`, 'm'));
      assert.match(report, /^Final-Recipient: rfc822; ghost@mbox\.test\r?$/m);
      assert.match(report, /^Action: failed\r?$/m);
      assert.match(report, /^Status: 5\.1\.1\r?$/m);
      assert.match(report, /^Remote-MTA: dns; 127\.0\.0\.1/m);
      assert.match(report, /^Diagnostic-Code: smtp; 550 5\.1\.1 /m);
      assert.doesNotMatch(report, /alice@mbox\.test/);
      const original = email.attachments.find((a) => a.mimeType === 'message/rfc822' || a.mimeType === 'text/rfc822-headers');
      assert.ok(original !== undefined, 'the original (or its headers) is returned');
      assert.match(String(original.content), /^Message-ID: <e2e-lmtp-tcp@mx\.test>\r?$/m);

      await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
      await p.waitLog((l) => l.event === 'removed' && l.qid === dsnLine.dsn_qid);
      const q = await p.cli(['queue', 'list', '--json']);
      assert.deepEqual(JSON.parse(q.stdout), [], 'nothing left in the queue');
    } finally {
      assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    }
  } finally {
    await dovecot.stop();
    removeDir(dir);
  }
});

test('LMTP to Dovecot over its Unix socket: both known users get the message in one transaction', { skip }, async () => {
  requirePeers(DOVECOT);
  const dovecot = await startDovecotLmtp(['alice', 'bob']);
  const dir = tempDir('palisade-e2e-lmtp-');
  try {
    const p = await startPalisade({ dir, toml: `[transport]\n"sock.test" = "lmtp:unix:${dovecot.socket}"\n` });
    try {
      const msg = message('alice@sock.test, bob@sock.test', 'e2e-lmtp-unix');
      const qid = await send(p, 'sender@mx.test', ['alice@sock.test', 'bob@sock.test'], msg);
      for (const user of ['alice', 'bob']) {
        const l = await p.waitLog((x) => x.event === 'delivery' && x.qid === qid && x.to === `${user}@sock.test`, 30_000);
        assert.equal(l.status, 'sent', JSON.stringify(l));
        assert.equal(l.relay, `unix:${dovecot.socket}`);
        assert.match(String(l.reply), new RegExp(`^250 2\\.0\\.0 <${user}@sock\\.test> .*Saved`));
        const files = await waitFor(`${user}'s copy`, () => (dovecot.delivered(user).length > 0 ? dovecot.delivered(user) : undefined));
        assert.equal(files.length, 1);
        // Two recipients in both transactions: no Delivered-To: from Dovecot, no "for" in Palisade's Received:.
        assertDovecotCopy(readFileSync(files[0]!, 'latin1'), null, qid, msg);
      }
      await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
      assert.deepEqual(maildir(p, 'sender'), [], 'no DSN');
    } finally {
      assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    }
  } finally {
    await dovecot.stop();
    removeDir(dir);
  }
});
