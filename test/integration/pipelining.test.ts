// SPDX-License-Identifier: MIT
// PIPELINING (RFC 2920): commands sent in one write get their replies in order, one each.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { once } from 'node:events';
import { startPalisade, type Running } from '../support/palisade.ts';
import { SmtpClient, openSession, queueIdOf, summary } from '../support/smtp-client.ts';
import { KEEP_QUEUED, readQueued, splitReceived } from '../support/queue.ts';

describe('pipelining', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, toml: '[local]\nrecipients = ["alice", "bob", "carol"]\n' + KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('MAIL, several RCPT and DATA in one write get their replies in order, then message and QUIT in one write', async () => {
    const c = await openSession(p.port);
    try {
      c.write('MAIL FROM:<sender@example.com>\r\nRCPT TO:<alice@mx.test>\r\nRCPT TO:<nobody@mx.test>\r\n' +
        'RCPT TO:<bob@mx.test>\r\nRCPT TO:<not an address>\r\nRCPT TO:<carol@mx.test>\r\nDATA\r\n');
      const replies = [];
      for (let i = 0; i < 7; i++) replies.push(summary((await c.read())!));
      assert.deepEqual(replies, ['250 2.1.0', '250 2.1.5', '550 5.1.1', '250 2.1.5', '501 5.1.3', '250 2.1.5', '354']);
      c.write('Subject: pipelined\r\n\r\nline one\r\n..dot line\r\n.\r\nQUIT\r\n');
      const rest = await c.readUntilClosed();
      assert.deepEqual(rest.map(summary), ['250 2.0.0', '221 2.0.0']);
      const q = await readQueued(p.spool, queueIdOf(rest[0]!));
      assert.deepEqual(q.envelope.recipients.map((r) => r.address), ['alice@mx.test', 'bob@mx.test', 'carol@mx.test']);
      assert.equal(splitReceived(q.message).rest.toString('latin1'), 'Subject: pipelined\r\n\r\nline one\r\n.dot line\r\n');
    } finally {
      c.close();
    }
  });

  test('a whole session after the greeting sent in one write gets every reply in order', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      c.write('EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<alice@mx.test>\r\nDATA\r\n' +
        'Subject: one\r\n\r\nfirst\r\n.\r\n' +
        'MAIL FROM:<b@example.com>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n' +
        'Subject: two\r\n\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n');
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), [
        '250', '250 2.1.0', '250 2.1.5', '354', '250 2.0.0',
        '250 2.1.0', '250 2.1.5', '354', '250 2.0.0', '250 2.0.0', '221 2.0.0',
      ]);
      const first = await readQueued(p.spool, queueIdOf(all[4]!));
      const second = await readQueued(p.spool, queueIdOf(all[8]!));
      assert.equal(first.envelope.sender, 'a@example.com');
      assert.equal(splitReceived(first.message).rest.toString('latin1'), 'Subject: one\r\n\r\nfirst\r\n');
      assert.equal(second.envelope.sender, 'b@example.com');
      assert.deepEqual(second.envelope.recipients.map((r) => r.address), ['bob@mx.test']);
      assert.equal(splitReceived(second.message).rest.toString('latin1'), 'Subject: two\r\n\r\nsecond\r\n');
    } finally {
      c.close();
    }
  });

  test('a client that sends its whole transaction and then closes its side (no QUIT) still gets every reply', async () => {
    const sock = connect(p.port, '127.0.0.1');
    await once(sock, 'connect');
    let got = '';
    sock.on('data', (c: Buffer) => (got += c.toString('latin1')));
    sock.end('EHLO half.test\r\nMAIL FROM:<sender@example.com>\r\nRCPT TO:<alice@mx.test>\r\nDATA\r\nSubject: half\r\n\r\nbody\r\n.\r\n');
    await once(sock, 'close');
    const codes = got.split('\r\n').filter((l) => /^\d{3} /.test(l)).map((l) => l.slice(0, 3));
    assert.deepEqual(codes, ['220', '250', '250', '250', '354', '250'], got);
    const q = await readQueued(p.spool, /queued as ([0-9A-Z]{16})/.exec(got)![1]!);
    assert.equal(splitReceived(q.message).rest.toString('latin1'), 'Subject: half\r\n\r\nbody\r\n');
  });

  test('RSET in a pipelined group clears the transaction before the commands after it', async () => {
    const c = await openSession(p.port);
    try {
      c.write('MAIL FROM:<a@example.com>\r\nRCPT TO:<alice@mx.test>\r\nRSET\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\nQUIT\r\n');
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), ['250 2.1.0', '250 2.1.5', '250 2.0.0', '503 5.5.1', '503 5.5.1', '221 2.0.0']);
    } finally {
      c.close();
    }
  });

  test('a pipelined group split across many small writes gets the same replies', async () => {
    const c = await openSession(p.port);
    try {
      const text = 'MAIL FROM:<a@example.com>\r\nRCPT TO:<alice@mx.test>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n';
      for (let i = 0; i < text.length; i += 3) {
        c.write(text.slice(i, i + 3));
        await new Promise((r) => setImmediate(r));
      }
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), ['250 2.1.0', '250 2.1.5', '354', '250 2.0.0', '221 2.0.0']);
      const q = await readQueued(p.spool, queueIdOf(all[3]!));
      assert.equal(splitReceived(q.message).rest.toString('latin1'), 'Subject: x\r\n\r\nbody\r\n');
    } finally {
      c.close();
    }
  });
});
