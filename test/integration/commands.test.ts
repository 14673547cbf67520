// SPDX-License-Identifier: MIT
// The SMTP command set as a client sees it: EHLO extensions, HELO, the mail transaction, RSET, NOOP, QUIT,
// VRFY, HELP, unknown and out-of-order commands, and require_helo (on here; relay.test.ts covers the default).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade, type Running } from '../support/palisade.ts';
import { SmtpClient, openSession, queueIdOf, summary } from '../support/smtp-client.ts';
import { KEEP_QUEUED, readQueued } from '../support/queue.ts';

describe('SMTP commands', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, smtp: 'max_message_size = 123456\nrequire_helo = true', toml: '[local]\nrecipients = ["alice"]\n' + KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('greets with 220 and the hostname', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      const g = await c.expect(220);
      assert.match(g.text, /^mx\.test /);
    } finally {
      c.close();
    }
  });

  test('EHLO answers 250 with the hostname and lists every extension with SIZE from the config', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      const r = await c.ok('EHLO client.test');
      assert.equal(r.text.split('\n')[0], 'mx.test');
      const ext = r.text.split('\n').slice(1);
      for (const e of ['PIPELINING', 'SIZE 123456', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SMTPUTF8', 'CHUNKING', 'DSN']) {
        assert.ok(ext.includes(e), `EHLO lacks ${e}: ${ext.join(', ')}`);
      }
      assert.ok(r.lines.slice(0, -1).every((l) => l.startsWith('250-')), 'continuation lines use "250-"');
      assert.ok(r.lines.at(-1)!.startsWith('250 '), 'the last line uses "250 "');
    } finally {
      c.close();
    }
  });

  test('HELO answers 250 with the hostname and no extension list', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      const r = await c.ok('HELO client.test');
      assert.deepEqual(r.lines, ['250 mx.test']);
    } finally {
      c.close();
    }
  });

  test('EHLO without a domain is refused with 501 5.5.4', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      await c.ok('EHLO', 501, '5.5.4');
      await c.ok('EHLO client.test');
    } finally {
      c.close();
    }
  });

  test('MAIL, RCPT and DATA accept a message with 250 2.1.0, 250 2.1.5, 354 and 250 2.0.0 queued', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<sender@example.com>', 250, '2.1.0');
      await c.ok('RCPT TO:<alice@mx.test>', 250, '2.1.5');
      await c.ok('DATA', 354);
      c.write('Subject: t\r\n\r\nbody\r\n.\r\n');
      const r = await c.expect(250, '2.0.0');
      const q = await readQueued(p.spool, queueIdOf(r));
      assert.equal(q.envelope.sender, 'sender@example.com');
      assert.deepEqual(q.envelope.recipients.map((x) => x.address), ['alice@mx.test']);
      await c.ok('QUIT', 221, '2.0.0');
    } finally {
      c.close();
    }
  });

  test('a session carries several messages one after another', async () => {
    const c = await openSession(p.port);
    try {
      const ids: string[] = [];
      for (const rcpt of ['alice@mx.test', 'postmaster@mx.test']) {
        await c.ok('MAIL FROM:<sender@example.com>');
        await c.ok(`RCPT TO:<${rcpt}>`);
        await c.ok('DATA', 354);
        c.write(`Subject: to ${rcpt}\r\n\r\nbody\r\n.\r\n`);
        ids.push(queueIdOf(await c.expect(250, '2.0.0')));
      }
      assert.notEqual(ids[0], ids[1]);
      assert.deepEqual((await readQueued(p.spool, ids[1]!)).envelope.recipients.map((x) => x.address), ['postmaster@mx.test']);
    } finally {
      c.close();
    }
  });

  test('RSET answers 250 2.0.0 and forgets the sender and recipients', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<sender@example.com>');
      await c.ok('RCPT TO:<alice@mx.test>');
      await c.ok('RSET', 250, '2.0.0');
      await c.ok('RCPT TO:<alice@mx.test>', 503, '5.5.1');
      await c.ok('DATA', 503, '5.5.1');
      await c.ok('MAIL FROM:<other@example.com>', 250, '2.1.0');
    } finally {
      c.close();
    }
  });

  test('NOOP answers 250 2.0.0 in any state', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      await c.ok('NOOP', 250, '2.0.0');
      await c.ok('EHLO client.test');
      await c.ok('MAIL FROM:<sender@example.com>');
      await c.ok('NOOP', 250, '2.0.0');
      await c.ok('RCPT TO:<alice@mx.test>', 250, '2.1.5');
    } finally {
      c.close();
    }
  });

  test('QUIT answers 221 2.0.0 and the server closes the connection', async () => {
    const c = await openSession(p.port);
    try {
      c.write('QUIT\r\n');
      const rest = await c.readUntilClosed();
      assert.deepEqual(rest.map(summary), ['221 2.0.0']);
      assert.equal(c.closed, true);
    } finally {
      c.close();
    }
  });

  test('VRFY answers 252 with the same text for a known and an unknown user (no enumeration)', async () => {
    const c = await openSession(p.port);
    try {
      const known = await c.ok('VRFY alice', 252, '2.5.0');
      const unknown = await c.ok('VRFY nobody-here', 252, '2.5.0');
      const knownFull = await c.ok('VRFY <alice@mx.test>', 252, '2.5.0');
      assert.equal(known.text, unknown.text);
      assert.equal(known.text, knownFull.text);
      assert.doesNotMatch(known.text, /alice/);
    } finally {
      c.close();
    }
  });

  test('EXPN answers like VRFY and reveals nothing', async () => {
    const c = await openSession(p.port);
    try {
      const r = await c.ok('EXPN postmaster', 252, '2.5.0');
      assert.doesNotMatch(r.text, /postmaster/i);
    } finally {
      c.close();
    }
  });

  test('HELP answers 214', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('HELP', 214, '2.0.0');
      await c.ok('HELP MAIL', 214, '2.0.0');
    } finally {
      c.close();
    }
  });

  test('an unknown command gets 500 5.5.1 and the session goes on', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('FROBNICATE now', 500, '5.5.1');
      await c.ok('XYZZY', 500, '5.5.1');
      await c.ok('NOOP', 250);
    } finally {
      c.close();
    }
  });

  test('verbs are case-insensitive', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      await c.ok('ehlo client.test', 250);
      await c.ok('mail from:<sender@example.com>', 250, '2.1.0');
      await c.ok('Rcpt To:<alice@mx.test>', 250, '2.1.5');
      await c.ok('rset', 250);
    } finally {
      c.close();
    }
  });

  for (const [name, setup, line] of [
    ['RCPT before MAIL', [], 'RCPT TO:<alice@mx.test>'],
    ['DATA before MAIL', [], 'DATA'],
    ['a second MAIL in one transaction', ['MAIL FROM:<a@example.com>'], 'MAIL FROM:<b@example.com>'],
  ] as const) {
    test(`${name} gets 503 5.5.1 and the session stays usable`, async () => {
      const c = await openSession(p.port);
      try {
        for (const l of setup) await c.ok(l);
        await c.ok(line, 503, '5.5.1');
        await c.ok('NOOP', 250);
      } finally {
        c.close();
      }
    });
  }

  test('DATA after MAIL with no accepted recipient gets 554 5.5.1 (RFC 5321 §3.3 "no valid recipients")', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<nobody@mx.test>', 550, '5.1.1');
      await c.ok('DATA', 554, '5.5.1');
      await c.ok('RCPT TO:<alice@mx.test>', 250);
    } finally {
      c.close();
    }
  });

  test('after HELO (not EHLO) MAIL parameters are refused with 501 5.5.4', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      await c.ok('HELO client.test');
      await c.ok('MAIL FROM:<a@example.com> SIZE=100', 501, '5.5.4');
      await c.ok('MAIL FROM:<a@example.com>', 250, '2.1.0');
    } finally {
      c.close();
    }
  });

  test('an unsupported MAIL parameter gets 555 5.5.4', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com> FOO=bar', 555, '5.5.4');
      await c.ok('MAIL FROM:<a@example.com> BODY=8BITMIME', 250, '2.1.0');
      await c.ok('RCPT TO:<alice@mx.test> BAR=1', 555, '5.5.4');
    } finally {
      c.close();
    }
  });

  test('STARTTLS and AUTH are not offered and answer 502 5.5.1', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('STARTTLS', 502, '5.5.1');
      await c.ok('AUTH PLAIN AGFAAGI=', 502, '5.5.1');
    } finally {
      c.close();
    }
  });

  test('with require_helo = true, MAIL before EHLO or HELO gets 503 5.5.1, and is accepted after EHLO', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      await c.ok('MAIL FROM:<a@example.com>', 503, '5.5.1');
      await c.ok('EHLO client.test');
      await c.ok('MAIL FROM:<a@example.com>', 250, '2.1.0');
    } finally {
      c.close();
    }
  });

  test('with require_helo = true, MAIL after HELO is accepted', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      await c.ok('HELO client.test');
      await c.ok('MAIL FROM:<a@example.com>', 250, '2.1.0');
    } finally {
      c.close();
    }
  });
});
