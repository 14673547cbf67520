// SPDX-License-Identifier: MIT
// A real Postfix → Palisade → local Maildir: Postfix relays everything to Palisade (its relayhost), mail
// injected into Postfix by SMTP (swaks) and by Postfix's own sendmail(1) lands in Palisade's Maildir for a
// local user with Return-Path:, Delivered-To:, Palisade's Received: naming Postfix, and the message unchanged.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPalisade, type Running } from '../../support/palisade.ts';
import { waitFor } from '../../support/net.ts';
import { IN_CI, removeDir, requirePeers, runPeer, skipWithoutPeers, tempDir } from '../../support/peers.ts';
import { POSTFIX, POSTFIX_SENDMAIL, startPostfixPeer } from '../../support/postfix-peer.ts';
import { SWAKS, swaks, unstuff } from '../../support/swaks.ts';

const skip = skipWithoutPeers(SWAKS, POSTFIX, POSTFIX_SENDMAIL) || (!IN_CI && process.getuid!() !== 0 ? 'a private Postfix needs root' : false);

// Complete headers, so Postfix adds none of its own.
function message(to: string, id: string, eol: '\n' | '\r\n'): string {
  return [
    'From: Sender <sender@example.com>',
    `To: <${to}>`,
    `Subject: e2e postfix to palisade (${id})`,
    'Date: Sat, 28 Nov 2026 01:00:00 +0000',
    `Message-ID: <${id}@example.com>`,
    '',
    'a line',
    '.a leading dot',
    '.',
    '  indented',
    'last line',
    '',
  ].join(eol);
}

/** The files in a local user's Maildir new/ under Palisade's default mailbox_dir. */
function maildir(p: Running, user: string): string[] {
  const nd = join(p.dir, 'var/mail', user, 'new');
  try {
    return readdirSync(nd).sort().map((f) => join(nd, f));
  } catch {
    return [];
  }
}

const DATE = '[A-Z][a-z]{2}, \\d{1,2} [A-Z][a-z]{2} \\d{4} \\d{2}:\\d{2}:\\d{2} \\+0000';

test('Postfix relaying to Palisade: mail sent into Postfix by SMTP and by its sendmail lands in Palisade\'s Maildir', { skip }, async () => {
  requirePeers(SWAKS, POSTFIX, POSTFIX_SENDMAIL);
  const dir = tempDir('palisade-e2e-from-postfix-');
  const file = join(dir, 'message.txt');
  writeFileSync(file, message('alice@local.test', 'e2e-via-smtp', '\n'));
  const p = await startPalisade({ dir, toml: '[local]\ndomains = ["mx.test", "local.test"]\n' });
  try {
    const pf = await startPostfixPeer({ domains: ['peer.test'], relay: `127.0.0.1:${p.port}` });
    try {
      const host = pf.hostname.replace(/\./g, '\\.');
      // 1. SMTP into Postfix.
      const sent = await swaks(pf.port, ['--from', 'sender@example.com', '--to', 'alice@local.test', '--data', `@${file}`]);
      // 2. Postfix's sendmail(1) with its private configuration directory (postdrop → pickup → cleanup).
      const viaSendmail = message('bob@local.test', 'e2e-via-sendmail', '\n');
      const sm = await runPeer(POSTFIX_SENDMAIL, ['-C', pf.etc, '-f', 'sender2@example.com', '-i', 'bob@local.test'], { input: viaSendmail, timeoutMs: 20_000 });
      assert.equal(sm.code, 0, `postfix sendmail failed: ${sm.stderr}`);

      const alice = await p.waitLog((l) => l.event === 'delivery' && l.to === 'alice@local.test', 30_000);
      const bob = await p.waitLog((l) => l.event === 'delivery' && l.to === 'bob@local.test', 30_000);
      for (const l of [alice, bob]) {
        assert.equal(l.status, 'sent', JSON.stringify(l));
        assert.equal(l.relay, 'local');
        assert.equal(l.dsn, '2.0.0');
      }
      const aliceFiles = await waitFor('alice\'s Maildir', () => (maildir(p, 'alice').length > 0 ? maildir(p, 'alice') : undefined));
      const bobFiles = await waitFor('bob\'s Maildir', () => (maildir(p, 'bob').length > 0 ? maildir(p, 'bob') : undefined));
      assert.equal(aliceFiles.length, 1);
      assert.equal(bobFiles.length, 1);

      // Message 1: Palisade's trace fields, then Postfix's Received: with its queue ID from swaks' 250, then the
      // message swaks sent, byte for byte but for the line ends (the queue keeps CRLF, a Maildir file has LF).
      const a = readFileSync(aliceFiles[0]!, 'latin1');
      const aHead = new RegExp(
        '^Return-Path: <sender@example\\.com>\\n' +
          'Delivered-To: alice@local\\.test\\n' +
          `Received: from ${host} \\(\\[127\\.0\\.0\\.1\\]\\)\\n\\tby mx\\.test \\(Palisade\\) with ESMTP id ${String(alice.qid)}\\n` +
          `\\tfor <alice@local\\.test>;\\n\\t${DATE}\\n` +
          `Received: from client\\.test \\(unknown \\[127\\.0\\.0\\.1\\]\\)\\n\\tby ${host} \\(Postfix\\) with ESMTP id ${sent.qid}\\n` +
          '\\tfor <alice@local\\.test>; [^\\n]+\\n',
      ).exec(a);
      assert.ok(aHead !== null, `trace fields of the relayed message are not as expected:\n${a.slice(0, 700)}`);
      assert.equal(a.slice(aHead[0].length), unstuff(sent.wire).toString('latin1').replaceAll('\r\n', '\n'), 'the message after the trace fields is what swaks sent to Postfix');

      // Message 2: Postfix's local-submission Received: (no "from"), then our message (LF line ends, as sendmail read it).
      const b = readFileSync(bobFiles[0]!, 'latin1');
      const bHead = new RegExp(
        '^Return-Path: <sender2@example\\.com>\\n' +
          'Delivered-To: bob@local\\.test\\n' +
          `Received: from ${host} \\(\\[127\\.0\\.0\\.1\\]\\)\\n\\tby mx\\.test \\(Palisade\\) with ESMTP id ${String(bob.qid)}\\n` +
          `\\tfor <bob@local\\.test>;\\n\\t${DATE}\\n` +
          `Received: by ${host} \\(Postfix, from userid \\d+\\)\\n\\tid [0-9A-F]+; [^\\n]+\\n`,
      ).exec(b);
      assert.ok(bHead !== null, `trace fields of the sendmail message are not as expected:\n${b.slice(0, 700)}`);
      assert.equal(b.slice(bHead[0].length), viaSendmail, 'the message after the trace fields is what sendmail read');

      // Postfix saw Palisade's 250 with the queue ID that Palisade's Received: names.
      await waitFor('Postfix to log both relays', () => ((pf.maillog().match(/relay=127\.0\.0\.1\[127\.0\.0\.1\]/g) ?? []).length >= 2 ? true : undefined));
      const log = pf.maillog();
      for (const [to, qid] of [['alice@local.test', alice.qid], ['bob@local.test', bob.qid]] as const) {
        assert.match(log, new RegExp(`to=<${to.replace(/\./g, '\\.')}>, relay=127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${p.port}, .*status=sent \\(250 2\\.0\\.0 Ok: queued as ${String(qid)}\\)`));
      }
      await p.waitLog((l) => l.event === 'removed' && l.qid === bob.qid);
      await p.waitLog((l) => l.event === 'removed' && l.qid === alice.qid);
      const q = await p.cli(['queue', 'list', '--json']);
      assert.deepEqual(JSON.parse(q.stdout), [], 'nothing left in Palisade\'s queue');
    } finally {
      await pf.stop();
    }
  } finally {
    assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    removeDir(dir);
  }
});
