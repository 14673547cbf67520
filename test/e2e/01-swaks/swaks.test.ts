// SPDX-License-Identifier: MIT
// swaks (Debian's swaks) → Palisade: what swaks puts on the wire is what lands in the queue, dot-unstuffed,
// behind one Received: field that names the queue ID from the 250 reply.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPalisade } from '../../support/palisade.ts';
import {
  parkingTransport, readQueued, removeDir, requirePeers, skipWithoutPeers, splitReceived, startParkingHop, tempDir,
} from '../../support/peers.ts';
import { SWAKS, swaks as runSwaks, unstuff } from '../../support/swaks.ts';

const skip = skipWithoutPeers(SWAKS);

/** Runs swaks against Palisade; returns the queue ID and the DATA bytes swaks sent (as on the wire, stuffed). */
function swaks(port: number, extra: string[]): ReturnType<typeof runSwaks> {
  return runSwaks(port, ['--from', 'sender@example.com', '--to', 'rcpt@remote.test', ...extra]);
}

function assertReceived(received: string, qid: string): void {
  assert.match(received, /^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby mx\.test \(Palisade\) with ESMTP id ([0-9A-Z]{16})\r\n\tfor <rcpt@remote\.test>;\r\n\t[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000\r\n$/);
  assert.equal(/ id ([0-9A-Z]{16})/.exec(received)![1], qid, 'Received: names the queue ID of the 250 reply');
}

test('swaks: queues its default message byte for byte behind a Received: field carrying the queue ID', { skip }, async () => {
  requirePeers(SWAKS);
  const dir = tempDir('palisade-e2e-swaks-');
  const hop = await startParkingHop();
  const p = await startPalisade({ dir, toml: parkingTransport(hop.port, ['remote.test']) });
  let sent: Awaited<ReturnType<typeof swaks>>;
  try {
    sent = await swaks(p.port, ['--header', 'Subject: e2e swaks plain']);
  } finally {
    assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    await hop.close();
  }
  try {
    const q = await readQueued(p.spool, sent.qid);
    const { received, rest } = splitReceived(q.message);
    assertReceived(received, sent.qid);
    assert.match(sent.wire.toString('utf8'), /^Subject: e2e swaks plain\r\n/m, 'swaks sent our header (transcript parsed)');
    assert.ok(rest.equals(unstuff(sent.wire)), `queued bytes differ from what swaks sent:\n${JSON.stringify(rest.toString('utf8'))}\nvs\n${JSON.stringify(unstuff(sent.wire).toString('utf8'))}`);
    assert.equal(q.file.envelope.sender, 'sender@example.com');
    assert.deepEqual(q.file.envelope.recipients.map((r) => r.address), ['rcpt@remote.test']);
    assert.equal(q.file.envelope.client.helo, 'client.test');
    assert.equal(q.file.envelope.smtputf8, false);
  } finally {
    removeDir(dir);
  }
});

test('swaks --data with leading-dot lines: queued dot-unstuffed, a lone "." line kept as content', { skip }, async () => {
  requirePeers(SWAKS);
  const dir = tempDir('palisade-e2e-swaks-');
  const hop = await startParkingHop();
  // Lines that start with dots, a line that is just ".", one that is "..", and a dot line right before the end.
  const body = 'Subject: e2e swaks dots\nX-Test: dots\n\n.leading dot\n..two leading dots\n.\n..\nmiddle\n. space\n.last\n';
  const file = join(dir, 'message.txt');
  writeFileSync(file, body);
  const p = await startPalisade({ dir, toml: parkingTransport(hop.port, ['remote.test']) });
  let sent: Awaited<ReturnType<typeof swaks>>;
  try {
    sent = await swaks(p.port, ['--data', `@${file}`]);
  } finally {
    assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    await hop.close();
  }
  try {
    // swaks stuffs: every line of ours that starts with "." went out with one more dot.
    assert.match(sent.wire.toString('utf8'), /^\.\.leading dot\r\n\.\.\.two leading dots\r\n\.\.\r\n\.\.\.\r\n/m, 'swaks dot-stuffed the data');
    const q = await readQueued(p.spool, sent.qid);
    const { received, rest } = splitReceived(q.message);
    assertReceived(received, sent.qid);
    assert.ok(rest.equals(unstuff(sent.wire)), `queued bytes differ from what swaks sent (unstuffed):\n${JSON.stringify(rest.toString('utf8'))}`);
    // And independently of the transcript: our file, CRLF line ends, is the start of the queued message.
    const ours = Buffer.from(body.replace(/\n/g, '\r\n'), 'utf8');
    assert.ok(rest.subarray(0, ours.length).equals(ours), `queued message does not start with the --data file:\n${JSON.stringify(rest.toString('utf8'))}`);
  } finally {
    removeDir(dir);
  }
});
