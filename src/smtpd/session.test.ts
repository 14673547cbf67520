// SPDX-License-Identifier: MIT
// Unit tests for the SMTP session handlers without I/O: ordering, limits, SMTPUTF8, duplicates, the envelope.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  newSession, hello, mail, rcpt, canStartBody, envelopeOf, resetTransaction, greeting,
  type Session, type SessionLimits,
} from './session.ts';
import type { RecipientPolicy } from './relay.ts';
import type { Reply } from '../core/reply.ts';
import { networkList } from '../core/cidr.ts';
import { createTable } from '../lookup/index.ts';

const LIMITS: SessionLimits = { hostname: 'mx.example.com', maxMessageSize: 1_000_000, maxRecipients: 3, requireHelo: false };
const POLICY: RecipientPolicy = {
  localDomains: new Set(['example.com']),
  relayDomains: new Set(),
  trusted: networkList(['127.0.0.0/8']),
  recipients: createTable([]),
  aliases: createTable([]),
};
const CLIENT = '198.51.100.7';

function assertReply(r: Reply, code: number, enhanced: string): void {
  assert.equal(`${r.code} ${r.enhanced}`, `${code} ${enhanced}`, r.lines.join(' '));
}

// A session that has said EHLO (or HELO).
function greeted(verb: 'EHLO' | 'HELO' = 'EHLO', ip = CLIENT): Session {
  const s = newSession(ip, 40000);
  assert.equal(hello(s, LIMITS, verb, 'client.example').code, 250);
  return s;
}

// A session inside a transaction from <sender>.
function inMail(params = '', verb: 'EHLO' | 'HELO' = 'EHLO'): Session {
  const s = greeted(verb);
  assertReply(mail(s, LIMITS, `FROM:<sender@example.org>${params ? ' ' + params : ''}`), 250, '2.1.0');
  return s;
}

describe('greeting and hello', () => {
  test('greets with 220 and the hostname', () => {
    const g = greeting(LIMITS);
    assert.equal(g.code, 220);
    assert.deepEqual(g.lines, ['mx.example.com ESMTP Palisade']);
  });

  test('answers EHLO with the hostname and the extensions, SIZE carrying the limit', () => {
    const r = hello(newSession(CLIENT, 1), LIMITS, 'EHLO', 'client.example');
    assert.equal(r.code, 250);
    assert.equal(r.lines[0], 'mx.example.com');
    for (const ext of ['PIPELINING', 'SIZE 1000000', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SMTPUTF8', 'CHUNKING', 'DSN']) {
      assert.ok(r.lines.includes(ext), `missing ${ext}`);
    }
  });

  test('answers HELO with the hostname alone', () => {
    assert.deepEqual(hello(newSession(CLIENT, 1), LIMITS, 'HELO', 'client.example').lines, ['mx.example.com']);
  });

  test('refuses EHLO and HELO without a name with 501 5.5.4', () => {
    assertReply(hello(newSession(CLIENT, 1), LIMITS, 'EHLO', ''), 501, '5.5.4');
    assertReply(hello(newSession(CLIENT, 1), LIMITS, 'HELO', '   '), 501, '5.5.4');
    assertReply(hello(newSession(CLIENT, 1), LIMITS, 'EHLO', 'two words'), 501, '5.5.4');
  });

  test('clears the transaction on a new EHLO', () => {
    const s = inMail();
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<a@example.com>'), 250, '2.1.5');
    hello(s, LIMITS, 'EHLO', 'again.example');
    assert.equal(s.sender, undefined);
    assert.deepEqual(s.recipients, []);
  });
});

describe('mail', () => {
  test('accepts MAIL before EHLO unless HELO is required', () => {
    assertReply(mail(newSession(CLIENT, 1), LIMITS, 'FROM:<a@example.org>'), 250, '2.1.0');
  });

  test('refuses ESMTP parameters on MAIL before any EHLO with 501 5.5.4, as RCPT does', () => {
    assertReply(mail(newSession(CLIENT, 1), LIMITS, 'FROM:<a@example.org> SIZE=100'), 501, '5.5.4');
  });

  test('refuses MAIL before EHLO with 503 5.5.1 when HELO is required', () => {
    assertReply(mail(newSession(CLIENT, 1), { ...LIMITS, requireHelo: true }, 'FROM:<a@example.org>'), 503, '5.5.1');
  });

  test('refuses a second MAIL in a transaction with 503 5.5.1', () => {
    assertReply(mail(inMail(), LIMITS, 'FROM:<b@example.org>'), 503, '5.5.1');
  });

  test('accepts MAIL again after the transaction is reset', () => {
    const s = inMail();
    resetTransaction(s);
    assertReply(mail(s, LIMITS, 'FROM:<b@example.org>'), 250, '2.1.0');
  });

  test('accepts the null sender', () => {
    const s = greeted();
    assertReply(mail(s, LIMITS, 'FROM:<>'), 250, '2.1.0');
    assert.equal(s.sender, null);
  });

  test('accepts "FROM:" in any case and with a space before the path', () => {
    assertReply(mail(greeted(), LIMITS, 'from: <a@example.org>'), 250, '2.1.0');
  });

  test('refuses MAIL without FROM: with 501 5.5.4', () => {
    assertReply(mail(greeted(), LIMITS, '<a@example.org>'), 501, '5.5.4');
  });

  test('refuses a malformed sender with 501 5.1.7', () => {
    assertReply(mail(greeted(), LIMITS, 'FROM:a@example.org'), 501, '5.1.7');
    assertReply(mail(greeted(), LIMITS, 'FROM:<a@@example.org>'), 501, '5.1.7');
  });

  test('refuses an over-long sender with 501 5.1.7', () => {
    assertReply(mail(greeted(), LIMITS, `FROM:<${'a'.repeat(65)}@example.org>`), 501, '5.1.7');
  });

  test('refuses a non-ASCII sender without SMTPUTF8 with 553 5.6.7', () => {
    const s = greeted();
    assertReply(mail(s, LIMITS, 'FROM:<jörg@example.org>'), 553, '5.6.7');
    assert.equal(s.sender, undefined);
    assertReply(mail(greeted(), LIMITS, 'FROM:<user@bücher.example>'), 553, '5.6.7');
  });

  test('accepts a non-ASCII sender with SMTPUTF8', () => {
    const s = greeted();
    assertReply(mail(s, LIMITS, 'FROM:<jörg@bücher.example> SMTPUTF8'), 250, '2.1.0');
    assert.equal(s.sender?.domain, 'xn--bcher-kva.example');
  });

  test('refuses parameters after HELO with 501 5.5.4', () => {
    const s = greeted('HELO');
    assertReply(mail(s, LIMITS, 'FROM:<a@example.org> SIZE=10'), 501, '5.5.4');
  });

  test('refuses a declared SIZE over the limit with 552 5.3.4', () => {
    assertReply(mail(greeted(), LIMITS, 'FROM:<a@example.org> SIZE=1000001'), 552, '5.3.4');
  });

  test('refuses an unknown parameter with 555 5.5.4', () => {
    assertReply(mail(greeted(), LIMITS, 'FROM:<a@example.org> XFOO=1'), 555, '5.5.4');
  });
});

describe('rcpt', () => {
  test('refuses RCPT before MAIL with 503 5.5.1', () => {
    assertReply(rcpt(greeted(), LIMITS, POLICY, 'TO:<a@example.com>'), 503, '5.5.1');
  });

  test('refuses RCPT without TO: with 501 5.5.4', () => {
    assertReply(rcpt(inMail(), LIMITS, POLICY, '<a@example.com>'), 501, '5.5.4');
  });

  test('refuses a malformed recipient with 501 5.1.3', () => {
    assertReply(rcpt(inMail(), LIMITS, POLICY, 'TO:<>'), 501, '5.1.3');
    assertReply(rcpt(inMail(), LIMITS, POLICY, 'TO:a@example.com'), 501, '5.1.3');
  });

  test('accepts recipients up to the limit, then answers 452 4.5.3', () => {
    const s = inMail();
    for (const who of ['a', 'b', 'c']) assertReply(rcpt(s, LIMITS, POLICY, `TO:<${who}@example.com>`), 250, '2.1.5');
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<d@example.com>'), 452, '4.5.3');
    assert.equal(s.recipients.length, 3);
  });

  test('keeps a duplicate recipient once, the first one\'s DSN parameters winning', () => {
    const s = inMail();
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<a@example.com> NOTIFY=FAILURE'), 250, '2.1.5');
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<a@Example.COM> NOTIFY=NEVER'), 250, '2.1.5');
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<a@example.com.>'), 250, '2.1.5');
    assert.deepEqual(s.recipients, [{ address: 'a@example.com', notify: ['FAILURE'] }]);
  });

  test('does not let duplicates use up the recipient limit', () => {
    const s = inMail();
    for (let i = 0; i < 5; i++) assertReply(rcpt(s, LIMITS, POLICY, 'TO:<a@example.com>'), 250, '2.1.5');
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<b@example.com>'), 250, '2.1.5');
  });

  test('refuses a non-ASCII recipient without SMTPUTF8 with 553 5.6.7', () => {
    assertReply(rcpt(inMail(), LIMITS, POLICY, 'TO:<jörg@example.com>'), 553, '5.6.7');
  });

  test('accepts a non-ASCII recipient when MAIL had SMTPUTF8', () => {
    const s = inMail('SMTPUTF8');
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<jörg@example.com>'), 250, '2.1.5');
    assert.equal(s.recipients[0]!.address, 'jörg@example.com');
  });

  test('always accepts <postmaster> without a domain', () => {
    const s = inMail();
    assertReply(rcpt(s, LIMITS, { ...POLICY, recipients: createTable(['someone']) }, 'TO:<Postmaster>'), 250, '2.1.5');
    assert.equal(s.recipients[0]!.address, 'postmaster@example.com');
  });

  test('reads "<Postmaster>x" as an address (a syntax error), not <Postmaster> with a parameter', () => {
    assertReply(rcpt(inMail(), LIMITS, POLICY, 'TO:<Postmaster>x'), 501, '5.1.3');
  });

  test('stores NOTIFY and ORCPT with the recipient', () => {
    const s = inMail();
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<a@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;A+2Bx@example.com'), 250, '2.1.5');
    assert.deepEqual(s.recipients, [{ address: 'a@example.com', notify: ['SUCCESS', 'DELAY'], orcpt: 'rfc822;A+x@example.com' }]);
  });

  test('refuses RCPT parameters after HELO with 501 5.5.4', () => {
    assertReply(rcpt(inMail('', 'HELO'), LIMITS, POLICY, 'TO:<a@example.com> NOTIFY=NEVER'), 501, '5.5.4');
  });

  test('refuses an unknown RCPT parameter with 555 5.5.4', () => {
    assertReply(rcpt(inMail(), LIMITS, POLICY, 'TO:<a@example.com> XFOO'), 555, '5.5.4');
  });

  test('refuses relaying from an untrusted client with 554 5.7.1 and records nothing', () => {
    const s = inMail();
    assertReply(rcpt(s, LIMITS, POLICY, 'TO:<x@elsewhere.example>'), 554, '5.7.1');
    assert.deepEqual(s.recipients, []);
  });
});

describe('canStartBody and envelopeOf', () => {
  test('refuses a body before MAIL with 503 5.5.1', () => {
    assertReply(canStartBody(greeted(), 'DATA')!, 503, '5.5.1');
  });

  test('refuses a body without recipients with 554 5.5.1', () => {
    assertReply(canStartBody(inMail(), 'DATA')!, 554, '5.5.1');
  });

  test('allows a body once there is a recipient', () => {
    const s = inMail();
    rcpt(s, LIMITS, POLICY, 'TO:<a@example.com>');
    assert.equal(canStartBody(s, 'DATA'), null);
  });

  test('refuses mixing BDAT and DATA in one transaction with 503 5.5.1', () => {
    const s = inMail();
    rcpt(s, LIMITS, POLICY, 'TO:<a@example.com>');
    s.bodyMode = 'BDAT';
    assertReply(canStartBody(s, 'DATA')!, 503, '5.5.1');
    assert.equal(canStartBody(s, 'BDAT'), null);
  });

  test('builds the envelope from the transaction', () => {
    const s = inMail('SIZE=500 BODY=8BITMIME RET=HDRS ENVID=abc SMTPUTF8');
    rcpt(s, LIMITS, POLICY, 'TO:<a@example.com>');
    assert.deepEqual(envelopeOf(s), {
      sender: 'sender@example.org',
      recipients: [{ address: 'a@example.com' }],
      ret: 'HDRS',
      envid: 'abc',
      body: '8BITMIME',
      smtputf8: true,
      declaredSize: 500,
      client: { ip: CLIENT, port: 40000, helo: 'client.example', protocol: 'UTF8SMTP' },
    });
  });

  test('gives the null sender as an empty string and the protocol as SMTP after HELO', () => {
    const s = greeted('HELO');
    mail(s, LIMITS, 'FROM:<>');
    rcpt(s, LIMITS, POLICY, 'TO:<a@example.com>');
    const e = envelopeOf(s);
    assert.equal(e.sender, '');
    assert.equal(e.client.protocol, 'SMTP');
  });
});

describe('session properties', () => {
  const addr = fc.constantFrom('a@example.com', 'A@Example.com', 'b@example.com', 'c@example.com', 'd@example.com', 'jörg@example.com', 'x@elsewhere.example', 'bad', '', 'postmaster');
  const params = fc.constantFrom('', ' SMTPUTF8', ' SIZE=10', ' SIZE=99999999', ' NOTIFY=NEVER', ' XFOO', ' BODY=8BITMIME');
  const command = fc.oneof(
    fc.tuple(fc.constantFrom<'EHLO' | 'HELO'>('EHLO', 'HELO'), fc.constantFrom('client.example', '', 'ü.example')).map(([v, a]) => ({ kind: v, arg: a })),
    fc.tuple(addr, params).map(([a, p]) => ({ kind: 'MAIL' as const, arg: `FROM:<${a}>${p}` })),
    fc.tuple(addr, params).map(([a, p]) => ({ kind: 'RCPT' as const, arg: `TO:<${a}>${p}` })),
    fc.constant({ kind: 'RSET' as const, arg: '' }),
    fc.tuple(fc.constantFrom('MAIL' as const, 'RCPT' as const), fc.string({ maxLength: 30 })).map(([k, a]) => ({ kind: k, arg: a })),
  );

  test('any command sequence keeps the session consistent and every reply well-formed', () => {
    fc.assert(
      fc.property(fc.array(command, { maxLength: 25 }), fc.boolean(), (cmds, requireHelo) => {
        const limits = { ...LIMITS, requireHelo };
        const s = newSession(CLIENT, 1);
        for (const c of cmds) {
          const before = s.recipients.length;
          const hadSender = s.sender !== undefined;
          let r: Reply;
          if (c.kind === 'EHLO' || c.kind === 'HELO') r = hello(s, limits, c.kind, c.arg);
          else if (c.kind === 'MAIL') r = mail(s, limits, c.arg);
          else if (c.kind === 'RCPT') r = rcpt(s, limits, POLICY, c.arg);
          else {
            resetTransaction(s);
            continue;
          }
          assert.ok(r.code >= 200 && r.code < 600);
          if (r.code >= 400) assert.match(r.enhanced, new RegExp(`^${String(r.code)[0]}\\.\\d{1,3}\\.\\d{1,3}$`));
          if (c.kind === 'RCPT') {
            if (!hadSender) assertReply(r, 503, '5.5.1');
            if (r.code !== 250) assert.equal(s.recipients.length, before);
          }
          assert.ok(s.recipients.length <= limits.maxRecipients);
          const lower = s.recipients.map((x) => x.address.toLowerCase());
          assert.equal(new Set(lower).size, lower.length, 'recipients are unique');
          if (s.mailParams.smtputf8 !== true) assert.ok(s.recipients.every((x) => /^[\x00-\x7f]*$/.test(x.address)));
          if (s.sender === undefined) assert.deepEqual(s.recipients, []);
        }
      }),
      { numRuns: 300 },
    );
  });
});
