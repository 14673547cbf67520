// SPDX-License-Identifier: MIT
// Relay control and address handling at MAIL/RCPT: local recipients, postmaster, no open relay (including
// sender-specified routing and address literals), relay domains, malformed and non-ASCII addresses, IPv6.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade, type Running } from '../support/palisade.ts';
import { SmtpClient, openSession, queueIdOf } from '../support/smtp-client.ts';
import { KEEP_QUEUED, readQueued } from '../support/queue.ts';

describe('relay control with no trusted networks', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({
      workers: 1,
      toml: '[local]\nrecipients = ["alice", "jöran"]\n[relay]\ntrusted_networks = []\ndomains = ["relay.test"]\n' + KEEP_QUEUED,
    });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  /** In a fresh session: MAIL (a@example.com by default), then RCPT with `path`, asserting its reply. */
  async function rcpt(path: string, code: number, enhanced: string, mail = 'MAIL FROM:<a@example.com>'): Promise<void> {
    const c = await openSession(p.port);
    try {
      await c.ok(mail, 250);
      await c.ok(`RCPT TO:${path}`, code, enhanced);
    } finally {
      c.close();
    }
  }

  test('a known local recipient is accepted with 250 2.1.5', async () => {
    await rcpt('<alice@mx.test>', 250, '2.1.5');
    await rcpt('<ALICE@MX.TEST>', 250, '2.1.5');
    await rcpt('<alice@localhost>', 250, '2.1.5');
  });

  test('an unknown local user gets 550 5.1.1 at RCPT', async () => {
    await rcpt('<bob@mx.test>', 550, '5.1.1');
  });

  test('postmaster at a local domain and the bare <postmaster> are always accepted', async () => {
    await rcpt('<postmaster@mx.test>', 250, '2.1.5');
    await rcpt('<Postmaster@MX.test>', 250, '2.1.5');
    await rcpt('<postmaster>', 250, '2.1.5');
    await rcpt('<POSTMASTER>', 250, '2.1.5');
  });

  test('a message to <postmaster> is queued for the postmaster of a local domain', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<postmaster>', 250);
      await c.ok('DATA', 354);
      c.write('Subject: hi\r\n\r\nx\r\n.\r\n');
      const q = await readQueued(p.spool, queueIdOf(await c.expect(250, '2.0.0')));
      assert.equal(q.envelope.recipients.length, 1);
      assert.match(q.envelope.recipients[0]!.address, /^postmaster@(mx\.test|localhost)$/);
    } finally {
      c.close();
    }
  });

  for (const [name, path] of [
    ['a remote domain', '<user@remote.test>'],
    ['the percent hack', '<user%remote.test@mx.test>'],
    ['a bang path', '<remote.test!user@mx.test>'],
    ['a quoted local part holding "@"', '<"user@remote.test"@mx.test>'],
    ['an IPv4 address literal', '<user@[127.0.0.1]>'],
    ['an IPv6 address literal', '<user@[IPv6:::1]>'],
  ] as const) {
    test(`${name} (${path}) is refused with 554 5.7.1 for an untrusted client`, async () => {
      await rcpt(path, 554, '5.7.1');
    });
  }

  test('a source route to a local mailbox is ignored, not used to relay', async () => {
    // RFC 5321 §3.6.1 / Appendix C: the route is dropped and the mailbox decides.
    await rcpt('<@remote.test:alice@mx.test>', 250, '2.1.5');
    await rcpt('<@mx.test:user@remote.test>', 554, '5.7.1');
  });

  test('a relay domain is accepted from anyone', async () => {
    await rcpt('<anyone@relay.test>', 250, '2.1.5');
    await rcpt('<anyone@RELAY.test.>', 250, '2.1.5');
    await rcpt('<anyone@sub.relay.test>', 554, '5.7.1');
  });

  for (const [name, line] of [
    ['no angle brackets', 'MAIL FROM:a@example.com'],
    ['no domain', 'MAIL FROM:<a>'],
    ['two @', 'MAIL FROM:<a@@example.com>'],
    ['a bad domain', 'MAIL FROM:<a@exa_mple.com>'],
    ['an unclosed path', 'MAIL FROM:<a@example.com'],
    ['a dot at the start of the local part', 'MAIL FROM:<.a@example.com>'],
  ] as const) {
    test(`a sender with ${name} gets 501 5.1.7`, async () => {
      const c = await openSession(p.port);
      try {
        await c.ok(line, 501, '5.1.7');
        await c.ok('MAIL FROM:<a@example.com>', 250);
      } finally {
        c.close();
      }
    });
  }

  for (const [name, path] of [
    ['the null path', '<>'],
    ['no domain', '<alice>'],
    ['a space inside', '<al ice@mx.test>'],
    ['an empty domain label', '<alice@mx..test>'],
    ['no angle brackets', 'alice@mx.test'],
  ] as const) {
    test(`a recipient with ${name} gets 501 5.1.3`, async () => {
      await rcpt(path, 501, '5.1.3');
    });
  }

  test('an overlong local part gets 501 (5.1.7 for the sender, 5.1.3 for a recipient)', async () => {
    const long = 'l'.repeat(65);
    const c = await openSession(p.port);
    try {
      await c.ok(`MAIL FROM:<${long}@example.com>`, 501, '5.1.7');
      await c.ok('MAIL FROM:<a@example.com>', 250);
      await c.ok(`RCPT TO:<${long}@mx.test>`, 501, '5.1.3');
    } finally {
      c.close();
    }
  });

  test('the null sender <> is accepted', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<>', 250, '2.1.0');
      await c.ok('RCPT TO:<alice@mx.test>', 250, '2.1.5');
      await c.ok('DATA', 354);
      c.write('Subject: bounce\r\n\r\nx\r\n.\r\n');
      const q = await readQueued(p.spool, queueIdOf(await c.expect(250, '2.0.0')));
      assert.equal(q.envelope.sender, '');
    } finally {
      c.close();
    }
  });

  test('a non-ASCII sender without SMTPUTF8 gets 553 5.6.7', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<jöran@example.com>', 553, '5.6.7');
      await c.ok('MAIL FROM:<a@bücher.example>', 553, '5.6.7');
    } finally {
      c.close();
    }
  });

  test('a non-ASCII recipient without SMTPUTF8 gets 553 5.6.7', async () => {
    await rcpt('<jöran@mx.test>', 553, '5.6.7');
  });

  test('with SMTPUTF8, non-ASCII addresses are accepted and queued as UTF8SMTP', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<jöran@bücher.example> SMTPUTF8', 250, '2.1.0');
      await c.ok('RCPT TO:<jöran@mx.test>', 250, '2.1.5');
      await c.ok('DATA', 354);
      c.write(Buffer.from('Subject: grüße\r\n\r\nx\r\n.\r\n', 'utf8'));
      const q = await readQueued(p.spool, queueIdOf(await c.expect(250, '2.0.0')));
      assert.equal(q.envelope.smtputf8, true);
      assert.equal(q.envelope.sender, 'jöran@xn--bcher-kva.example');
      assert.deepEqual(q.envelope.recipients.map((r) => r.address), ['jöran@mx.test']);
      assert.match(q.message.toString('utf8'), /with UTF8SMTP id/);
    } finally {
      c.close();
    }
  });
});

/** True when this host has a usable ::1 (connection refused there still means it exists). */
async function hasIpv6Loopback(): Promise<boolean> {
  return SmtpClient.connect(1, '::1').then(
    (c) => { c.close(); return true; },
    (e: NodeJS.ErrnoException) => e.code !== 'EADDRNOTAVAIL' && e.code !== 'EAFNOSUPPORT' && e.code !== 'ENETUNREACH',
  );
}

describe('IPv4 and IPv6 listeners with only 127.0.0.0/8 trusted', () => {
  let p: Running;
  let v6 = false;
  before(async () => {
    // Skip the IPv6 part only when the host has no ::1 at all.
    v6 = await hasIpv6Loopback();
    p = await startPalisade({
      workers: 1,
      listen: v6 ? ['127.0.0.1:0', '[::1]:0'] : ['127.0.0.1:0'],
      toml: '[relay]\ntrusted_networks = ["127.0.0.0/8"]\n' + KEEP_QUEUED,
    });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('a client in trusted_networks may relay to a remote domain', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@remote.test>', 250, '2.1.5');
    } finally {
      c.close();
    }
  });

  test('MAIL before EHLO is accepted when require_helo is off (the default)', async () => {
    const c = await SmtpClient.connect(p.port);
    try {
      await c.expect(220);
      await c.ok('MAIL FROM:<a@example.com>', 250, '2.1.0');
    } finally {
      c.close();
    }
  });

  test('"[::1]:0" listens on ::1: mail is accepted there, and ::1 is not trusted unless listed', async (t) => {
    if (!v6) {
      t.skip('::1 is not available on this host');
      return;
    }
    const listener = p.listeners.smtp!.find((l) => l.startsWith('[::1]:'));
    assert.ok(listener !== undefined, `ready line lists [::1]:port: ${p.listeners.smtp!.join(', ')}`);
    const c = await openSession(Number(listener.split(':').pop()), '::1');
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@remote.test>', 554, '5.7.1');
      await c.ok('RCPT TO:<user@mx.test>', 250, '2.1.5');
      await c.ok('DATA', 354);
      c.write('Subject: v6\r\n\r\nx\r\n.\r\n');
      const q = await readQueued(p.spool, queueIdOf(await c.expect(250, '2.0.0')));
      assert.equal(q.envelope.client.ip, '::1');
      assert.match(q.message.toString(), /^Received: from client\.test \(\[::1\]\)/);
    } finally {
      c.close();
    }
  });
});
