// SPDX-License-Identifier: MIT
// Fairness between destinations: a next hop that accepts TCP and never answers ties up only its own
// connections; mail for a healthy destination keeps flowing meanwhile, and the hung deliveries end in a
// timeout that defers (never bounces) their messages.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';

/** Sends one message per recipient over a single session (one transaction each); returns the queue IDs. */
async function sendMany(port: number, rcpts: string[]): Promise<string[]> {
  const c = await openSession(port);
  const ids: string[] = [];
  try {
    for (const [i, r] of rcpts.entries()) {
      await c.ok('MAIL FROM:<sender@client.test>');
      await c.ok(`RCPT TO:<${r}>`);
      await c.ok('DATA', 354);
      c.write(`Subject: message ${i}\r\n\r\nbody ${i}\r\n.\r\n`);
      ids.push(queueIdOf(await c.expect(250)));
    }
    await c.cmd('QUIT');
  } finally {
    c.close();
  }
  return ids;
}

describe('a hanging destination', () => {
  let hung: SmtpPeer;
  let healthy: SmtpPeer;
  let p: Running;
  before(async () => {
    hung = await startSmtpPeer({ hang: true });
    healthy = await startSmtpPeer();
    p = await startPalisade({
      toml: `[transport]\n"slow.test" = "smtp:[127.0.0.1]:${hung.port}"\n"fast.test" = "smtp:[127.0.0.1]:${healthy.port}"\n` +
        '[queue]\nretry_min = "30s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\ntimeout = "3s"\nconnect_timeout = "2s"\n',
    });
  });
  after(async () => {
    const code = await p?.stop();
    await Promise.all([hung?.close(), healthy?.close()]);
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('does not delay a healthy destination: its 20 messages arrive while the hung connections are still open', async () => {
    const slow = await sendMany(p.port, Array.from({ length: 5 }, (_, i) => `stuck${i}@slow.test`));
    // Every hung delivery holds a connection (initial_concurrency is 5) before the healthy mail is even sent.
    await hung.waitConnections(slow.length, 5_000);
    const hungSince = Date.now();
    const fast = await sendMany(p.port, Array.from({ length: 20 }, (_, i) => `user${i}@fast.test`));
    await healthy.waitMessages(20, 20_000);
    const openWhenDone = hung.connections.open;
    const timedOut = p.logs().filter((l) => l.event === 'delivery' && slow.includes(String(l.qid)));
    assert.deepEqual(timedOut, [], `all healthy mail arrived before the first hung delivery timed out (took ${Date.now() - hungSince} ms)`);
    assert.ok(openWhenDone > 0, 'the hanging peer still held connections');
    assert.deepEqual(healthy.messages.map((m) => m.rcpts[0]!.address).sort(), fast.map((_, i) => `user${i}@fast.test`).sort());

    // Then the hung deliveries give up: deferred with a timeout, never bounced.
    const first = await p.waitLog((l) => l.event === 'delivery' && slow.includes(String(l.qid)), 15_000);
    assert.equal(first.status, 'deferred');
    assert.match(String(first.dsn), /^4\./);
    assert.match(String(first.reply), /timeout/i);
    for (const qid of slow) await p.waitLog((l) => l.event === 'delivery' && l.qid === qid, 15_000);
    assert.ok(!p.logs().some((l) => l.event === 'delivery' && slow.includes(String(l.qid)) && l.status !== 'deferred'));
  });
});

describe('a destination that stops reading the message after 354', () => {
  let stalled: SmtpPeer;
  let p: Running;
  before(async () => {
    stalled = await startSmtpPeer({ stallData: true });
    p = await startPalisade({
      smtp: 'max_message_size = 20000000',
      toml: `[transport]\n"stall.test" = "smtp:[127.0.0.1]:${stalled.port}"\n` +
        '[queue]\nretry_min = "30s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\ntimeout = "2s"\n',
    });
  });
  after(async () => {
    const code = await p?.stop();
    await stalled?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('the delivery fails after the data timeout (RFC 5321 §4.5.3.2.5) and is deferred, not left hanging', async () => {
    // Larger than what the kernel buffers on both sides take in without the peer reading.
    const line = 'x'.repeat(998) + '\r\n';
    const c = await openSession(p.port);
    let qid: string;
    try {
      await c.ok('MAIL FROM:<sender@client.test>');
      await c.ok('RCPT TO:<big@stall.test>');
      await c.ok('DATA', 354);
      c.write('Subject: big\r\n\r\n' + line.repeat(9000) + '.\r\n');
      qid = queueIdOf(await c.expect(250));
    } finally {
      c.close();
    }
    const d = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid, 20_000);
    assert.equal(d.status, 'deferred');
    assert.match(String(d.dsn), /^4\./);
    assert.match(String(d.reply), /timeout after 2s sending data/);
  });
});
