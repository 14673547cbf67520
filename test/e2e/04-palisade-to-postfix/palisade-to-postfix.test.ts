// SPDX-License-Identifier: MIT
// swaks → Palisade → a real Postfix: Palisade relays over a bracketed transport route, Postfix accepts and
// writes the message into its Maildir. What arrives is our message byte for byte (in Postfix's LF form)
// behind Postfix's Received: and the Received: Palisade added, which names Palisade's queue ID.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPalisade } from '../../support/palisade.ts';
import { waitFor } from '../../support/net.ts';
import { IN_CI, removeDir, requirePeers, skipWithoutPeers, tempDir } from '../../support/peers.ts';
import { POSTFIX, startPostfixPeer } from '../../support/postfix-peer.ts';
import { SWAKS, swaks, toLf, unstuff } from '../../support/swaks.ts';

// A private Postfix needs root (its daemons switch to the postfix user); CI runs as root.
const skip = skipWithoutPeers(SWAKS, POSTFIX) || (!IN_CI && process.getuid!() !== 0 ? 'a private Postfix needs root' : false);

// Complete headers, so Postfix adds none of its own (it would for a client on a local interface).
const MESSAGE = [
  'From: Sender <sender@example.com>',
  'To: <rcpt@peer.test>',
  'Subject: e2e palisade to postfix',
  'Date: Sat, 28 Nov 2026 01:00:00 +0000',
  'Message-ID: <e2e-palisade-to-postfix@example.com>',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=us-ascii',
  '',
  'first line',
  '.one leading dot',
  '..two leading dots',
  '.',
  'trailing spaces   ',
  '\tindented with a tab',
  'x'.repeat(990),
  'last line',
  '',
].join('\n');

test('swaks → Palisade → Postfix: the message lands in Postfix\'s Maildir unchanged behind Palisade\'s Received:', { skip }, async () => {
  requirePeers(SWAKS, POSTFIX);
  const dir = tempDir('palisade-e2e-to-postfix-');
  const file = join(dir, 'message.txt');
  writeFileSync(file, MESSAGE);
  const pf = await startPostfixPeer({ domains: ['peer.test'] });
  try {
    const p = await startPalisade({ dir, toml: `[transport]\n"peer.test" = "smtp:[127.0.0.1]:${pf.port}"\n` });
    try {
      const sent = await swaks(p.port, ['--from', 'sender@example.com', '--to', 'rcpt@peer.test', '--data', `@${file}`]);
      const line = await p.waitLog((l) => l.event === 'delivery' && l.qid === sent.qid, 30_000);
      assert.equal(line.status, 'sent', `delivery to Postfix: ${JSON.stringify(line)}`);
      assert.equal(line.to, 'rcpt@peer.test');
      assert.equal(line.relay, `127.0.0.1:${pf.port}`);
      assert.equal(line.dsn, '2.0.0');
      const pfId = /^250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$/.exec(String(line.reply))?.[1];
      assert.ok(pfId !== undefined, `Postfix's reply is in the log line: ${JSON.stringify(line.reply)}`);
      await p.waitLog((l) => l.event === 'removed' && l.qid === sent.qid);

      const delivered = await waitFor('the message in Postfix\'s Maildir', () => {
        const files = pf.delivered('peer.test');
        return files.length > 0 ? files : undefined;
      }, 15_000);
      assert.equal(delivered.length, 1, 'exactly one message delivered');
      const text = readFileSync(delivered[0]!, 'latin1');
      // Postfix's virtual(8) prepends Return-Path:, X-Original-To:, Delivered-To: and its own Received: naming Palisade's HELO.
      const pfHead = new RegExp(
        '^Return-Path: <sender@example\\.com>\\n' +
          'X-Original-To: rcpt@peer\\.test\\n' +
          'Delivered-To: rcpt@peer\\.test\\n' +
          `Received: from mx\\.test \\(unknown \\[127\\.0\\.0\\.1\\]\\)\\n\\tby ${pf.hostname.replace(/\./g, '\\.')} \\(Postfix\\) with ESMTP id ${pfId}\\n` +
          '\\tfor <rcpt@peer\\.test>; [^\\n]+\\n',
      ).exec(text);
      assert.ok(pfHead !== null, `Postfix's trace fields are not as expected:\n${text.slice(0, 600)}`);
      const rest = text.slice(pfHead[0].length);
      const ours = /^Received: from client\.test \(\[127\.0\.0\.1\]\)\n\tby mx\.test \(Palisade\) with ESMTP id ([0-9A-Z]{16})\n\tfor <rcpt@peer\.test>;\n\t[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000\n/.exec(rest);
      assert.ok(ours !== null, `Palisade's Received: is not next:\n${rest.slice(0, 400)}`);
      assert.equal(ours[1], sent.qid, 'Palisade\'s Received: names the queue ID swaks got');
      const body = rest.slice(ours[0].length);
      assert.equal(body, toLf(unstuff(sent.wire)), 'the message after the trace fields is what swaks sent, dot-unstuffed');
      assert.ok(body.startsWith(MESSAGE), 'and it starts with our file');

      const q = await p.cli(['queue', 'list', '--json']);
      assert.equal(q.code, 0, q.stderr);
      assert.deepEqual(JSON.parse(q.stdout), [], 'nothing left in Palisade\'s queue');
      assert.match(pf.maillog(), new RegExp(`${pfId}: to=<rcpt@peer\\.test>, relay=virtual, .*status=sent \\(delivered to maildir\\)`));
    } finally {
      assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    }
  } finally {
    await pf.stop();
    removeDir(dir);
  }
});
