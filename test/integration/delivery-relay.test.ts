// SPDX-License-Identifier: MIT
// Relaying to the next hop: what the peer receives (envelope, parameters, bytes), and how the peer's
// extensions and refusals decide the outcome (SMTPUTF8, SIZE, 552 at RCPT).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf, sendMessage } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { parseDsn, waitMaildir } from '../support/mailbox.ts';

const FAST = '[queue]\nretry_min = "1s"\nretry_max = "2s"\nscan_interval = "200ms"\n' +
  '[delivery]\nworkers = 1\ntimeout = "5s"\nconnect_timeout = "2s"\nmax_recipients = 2\nconnection_cache_time = "5s"\n';

/** Sends raw DATA bytes (dot-stuffed, with the final dot) in one transaction; returns the queue ID. */
async function sendRaw(port: number, mail: string, rcpts: string[], data: string | Buffer): Promise<string> {
  const c = await openSession(port);
  try {
    await c.ok(mail);
    for (const r of rcpts) await c.ok(r);
    await c.ok('DATA', 354);
    c.write(data);
    return queueIdOf(await c.expect(250));
  } finally {
    c.close();
  }
}

/** The delivery log lines for `qid`. */
function deliveries(p: Running, qid: string): Record<string, unknown>[] {
  return p.logs().filter((l) => l.event === 'delivery' && l.qid === qid);
}

describe('relaying to the next hop', () => {
  // Three peers behind three domains: one with every extension, one plain, one small and ASCII-only.
  let full: SmtpPeer;
  let plain: SmtpPeer;
  let small: SmtpPeer;
  let mirror: SmtpPeer;
  let limited: SmtpPeer;
  let closedPort: number;
  let p: Running;
  before(async () => {
    // A peer that greets with our own hostname (a route back to ourselves), and a port where nothing listens.
    mirror = await startSmtpPeer({ hostname: 'mx.test' });
    const gone = await startSmtpPeer();
    closedPort = gone.port;
    await gone.close();
    full = await startSmtpPeer();
    plain = await startSmtpPeer({ extensions: { dsn: false, pipelining: false, size: false } });
    small = await startSmtpPeer({ extensions: { smtputf8: false, eightbitmime: false, size: 2000 } });
    // Slow to answer the final dot, so deliveries would overlap if the window let them.
    limited = await startSmtpPeer({ dataReplyDelayMs: 200 });
    // Senders in mx.test (a local domain) get their DSNs in a Maildir.
    p = await startPalisade({
      toml: `[transport]\n"remote.test" = "smtp:[127.0.0.1]:${full.port}"\n"plain.test" = "smtp:[127.0.0.1]:${plain.port}"\n` +
        `"small.test" = "smtp:[127.0.0.1]:${small.port}"\n"loop.test" = "smtp:[127.0.0.1]:${mirror.port}"\n` +
        `"closed.test" = "smtp:[127.0.0.1]:${closedPort}"\n"limited.test" = "smtp:[127.0.0.1]:${limited.port}"\n${FAST}` +
        `[delivery.destinations]\n"[127.0.0.1]:${limited.port}" = { concurrency = 1, max_recipients = 1 }\n`,
    });
  });
  after(async () => {
    const code = await p?.stop();
    await Promise.all([full?.close(), plain?.close(), small?.close(), mirror?.close(), limited?.close()]);
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('the peer receives the envelope with SIZE, BODY and the DSN parameters passed on, and the body byte for byte', async () => {
    const body =
      'From: Sender <sender@client.test>\r\nTo: one@remote.test\r\nSubject: relay\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n' +
      'Message-ID: <relay-1@client.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n' +
      '.leading dot\r\n..two dots\r\n.\r\nx.\r\nCaf\u00e9 \u2713\r\n\r\nlast line\r\n';
    const stuffed = body.replace(/^\./gm, '..');
    const qid = await sendRaw(
      p.port,
      'MAIL FROM:<sender@client.test> BODY=8BITMIME RET=HDRS ENVID=env+2Bid-1',
      ['RCPT TO:<one@remote.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;one+2Balias@remote.test', 'RCPT TO:<two@remote.test> NOTIFY=NEVER'],
      Buffer.from(stuffed + '.\r\n', 'utf8'),
    );
    const [m] = await full.waitMessages(1);
    assert.equal(m!.from, 'sender@client.test');
    assert.equal(m!.mailParams.BODY, '8BITMIME');
    assert.equal(m!.mailParams.RET, 'HDRS');
    assert.equal(m!.mailParams.ENVID, 'env+2Bid-1');
    assert.equal(Number(m!.mailParams.SIZE), m!.data.length, 'SIZE is the exact size of what is sent');
    assert.deepEqual(m!.rcpts.map((r) => [r.address, r.params.NOTIFY, r.params.ORCPT]), [
      ['one@remote.test', 'FAILURE,DELAY', 'rfc822;one+2Balias@remote.test'],
      ['two@remote.test', 'NEVER', undefined],
    ]);
    // Our Received: field first, then the message exactly as the client sent it (dot-unstuffed).
    const text = m!.data.toString('latin1');
    const rec = /^Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*/.exec(text);
    assert.ok(rec !== null, `starts with Received: ${JSON.stringify(text.slice(0, 60))}`);
    assert.match(rec[0], new RegExp(qid));
    assert.ok(m!.data.subarray(rec[0].length).equals(Buffer.from(body, 'utf8')), 'body is byte-identical after Received:');
    // On the wire, every line starting with "." was stuffed again.
    assert.ok(m!.wire.toString('latin1').includes('\r\n..leading dot\r\n...two dots\r\n..\r\nx.\r\n'), 'dot-stuffed on the wire');
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.to === 'two@remote.test');
    assert.equal(log.status, 'sent');
    assert.equal(log.dsn, '2.0.0');
    assert.equal(log.relay, `127.0.0.1:${full.port}`);
    assert.match(String(log.reply), /^250 /);
    assert.equal(typeof log.delay, 'number');
  });

  test('an empty message arrives as just our Received: field, ended by CRLF "." CRLF', async () => {
    const before = full.messages.length;
    await sendRaw(p.port, 'MAIL FROM:<sender@client.test>', ['RCPT TO:<empty@remote.test>'], '.\r\n');
    const m = (await full.waitMessages(before + 1))[before]!;
    assert.match(m.data.toString('latin1'), /^Received: [^]*\r\n$/);
    assert.doesNotMatch(m.data.toString('latin1'), /\r\n\r\n/, 'no body added');
    assert.ok(m.wire.toString('latin1').endsWith('\r\n.\r\n'));
  });

  test('one message to two recipients of the same destination is sent once, in one transaction', async () => {
    const before = full.messages.length;
    const r = await sendMessage(p.port, 'sender@client.test', ['a@remote.test', 'b@remote.test'], 'Subject: one transaction\n\nhello\n');
    assert.equal(r.code, 250);
    const msgs = await full.waitMessages(before + 1);
    const m = msgs[before]!;
    assert.deepEqual(m.rcpts.map((x) => x.address).sort(), ['a@remote.test', 'b@remote.test']);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(full.messages.length, before + 1, 'not delivered twice');
  });

  test('more recipients than max_recipients are split over several transactions, each recipient sent once', async () => {
    const before = full.messages.length;
    const rcpts = ['s1', 's2', 's3', 's4', 's5'].map((u) => `${u}@remote.test`);
    const qid = queueIdOf(await sendMessage(p.port, 'sender@client.test', rcpts, 'Subject: split\n\nfive recipients\n'));
    const msgs = (await full.waitMessages(before + 3)).slice(before);
    assert.deepEqual(msgs.map((m) => m.rcpts.length).sort(), [1, 2, 2]);
    assert.deepEqual(msgs.flatMap((m) => m.rcpts.map((r) => r.address)).sort(), rcpts);
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    assert.equal(full.messages.length, before + 3);
  });

  test('a destination with its own limits gets one recipient per transaction and one connection at a time', async () => {
    const rcpts = ['l1', 'l2', 'l3'].map((u) => `${u}@limited.test`);
    const a = queueIdOf(await sendMessage(p.port, 'sender@client.test', rcpts.slice(0, 2), 'Subject: limited a\n\na\n'));
    const b = queueIdOf(await sendMessage(p.port, 'sender@client.test', rcpts.slice(2), 'Subject: limited b\n\nb\n'));
    const msgs = await limited.waitMessages(3);
    assert.deepEqual(msgs.map((m) => m.rcpts.length), [1, 1, 1], 'max_recipients = 1 (the default here is 2)');
    assert.deepEqual(msgs.flatMap((m) => m.rcpts.map((r) => r.address)).sort(), rcpts);
    await p.waitLog((l) => l.event === 'removed' && l.qid === a);
    await p.waitLog((l) => l.event === 'removed' && l.qid === b);
    assert.equal(limited.connections.peak, 1, 'concurrency = 1 (the default window here starts at 5)');
  });

  test('consecutive messages to one destination reuse the cached connection', async () => {
    const before = full.messages.length;
    const first = queueIdOf(await sendMessage(p.port, 'sender@client.test', ['reuse1@remote.test'], 'Subject: one\n\n1\n'));
    await p.waitLog((l) => l.event === 'delivery' && l.qid === first);
    await sendMessage(p.port, 'sender@client.test', ['reuse2@remote.test'], 'Subject: two\n\n2\n');
    const msgs = await full.waitMessages(before + 2);
    assert.equal(msgs[before + 1]!.connection, msgs[before]!.connection, 'same connection');
    assert.equal(full.commands.filter((c) => c.startsWith(`${msgs[before]!.connection}> EHLO`)).length, 1, 'greeted once');
  });

  test('no DSN or SIZE parameters are sent to a peer without them, and commands wait for their replies', async () => {
    await sendRaw(p.port, 'MAIL FROM:<sender@client.test> RET=FULL ENVID=abc', ['RCPT TO:<one@plain.test> NOTIFY=FAILURE ORCPT=rfc822;one@plain.test'], 'Subject: x\r\n\r\nx\r\n.\r\n');
    const [m] = await plain.waitMessages(1);
    assert.deepEqual(m!.mailParams, {});
    assert.deepEqual(m!.rcpts[0]!.params, {});
    const cmds = plain.commands.map((c) => c.replace(/^\d+> /, '').split(' ')[0]);
    assert.deepEqual(cmds.slice(0, 4), ['EHLO', 'MAIL', 'RCPT', 'DATA']);
    assert.equal(plain.pipelined(), 0, 'no command was sent before the previous reply');
    assert.ok(full.pipelined() > 0, 'the peer with PIPELINING got MAIL, RCPT and DATA together');
  });

  test('an SMTPUTF8 message to a peer without SMTPUTF8 is bounced with 5.6.7 and nothing is sent', async () => {
    const qid = await sendRaw(p.port, 'MAIL FROM:<utf8@mx.test> SMTPUTF8', ['RCPT TO:<j\u00f6rg@small.test>'], Buffer.from('Subject: gr\u00fc\u00dfe\r\n\r\nhi\r\n.\r\n', 'utf8'));
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'bounced');
    assert.equal(log.dsn, '5.6.7');
    const [raw] = await waitMaildir(p.dir, 'utf8');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.recipients.length, 1);
    assert.equal(dsn.recipients[0]!['action'], 'failed');
    assert.equal(dsn.recipients[0]!['status'], '5.6.7');
    assert.equal(small.transactions(), 0, 'no MAIL was sent to the peer');
  });

  test('an 8-bit message to a peer without 8BITMIME is bounced with 5.6.3, not sent unconverted', async () => {
    const qid = await sendRaw(p.port, 'MAIL FROM:<eight@mx.test> BODY=8BITMIME', ['RCPT TO:<eight@small.test>'], Buffer.from('Subject: 8bit\r\n\r\nk\u00e4se\r\n.\r\n', 'utf8'));
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'bounced');
    assert.equal(log.dsn, '5.6.3');
    const [raw] = await waitMaildir(p.dir, 'eight');
    assert.equal((await parseDsn(raw!)).recipients[0]!['status'], '5.6.3');
    assert.equal(small.messages.length, 0);
  });

  test('a message over the peer\'s SIZE is bounced with 5.3.4 without being sent', async () => {
    const big = 'Subject: big\r\n\r\n' + ('x'.repeat(70) + '\r\n').repeat(60);
    const qid = await sendRaw(p.port, 'MAIL FROM:<big@mx.test>', ['RCPT TO:<big@small.test>'], big + '.\r\n');
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'bounced');
    assert.equal(log.dsn, '5.3.4');
    const [raw] = await waitMaildir(p.dir, 'big');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.recipients[0]!['status'], '5.3.4');
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; big@small.test');
    assert.equal(small.messages.length, 0);
  });

  test('552 at RCPT is treated as temporary: the recipient is deferred, not bounced', async () => {
    small.script.rcptReplies['full@small.test'] = '552 5.2.2 Mailbox full';
    const qid = await sendRaw(p.port, 'MAIL FROM:<full@mx.test>', ['RCPT TO:<full@small.test>'], 'Subject: full\r\n\r\nx\r\n.\r\n');
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'deferred');
    assert.match(String(log.dsn), /^4\./);
    assert.equal(log.reply, '552 5.2.2 Mailbox full');
    const list = JSON.parse((await p.cli(['queue', 'list', '--json'])).stdout) as { id: string; state: string; recipients: { state: string; last_reply: string }[] }[];
    const e = list.find((x) => x.id === qid);
    assert.ok(e !== undefined, 'still queued');
    assert.equal(e.recipients[0]!.state, 'deferred');
    assert.equal(e.recipients[0]!.last_reply, '552 5.2.2 Mailbox full');
    assert.equal(deliveries(p, qid).filter((l) => l.status === 'bounced').length, 0);
  });

  test('a next hop that greets with our own hostname is a mail loop: bounced with 5.4.6, nothing sent', async () => {
    const qid = await sendRaw(p.port, 'MAIL FROM:<loop@mx.test>', ['RCPT TO:<user@loop.test>'], 'Subject: loop\r\n\r\nround and round\r\n.\r\n');
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'bounced');
    assert.equal(log.dsn, '5.4.6');
    const [raw] = await waitMaildir(p.dir, 'loop');
    assert.equal((await parseDsn(raw!)).recipients[0]!['status'], '5.4.6');
    assert.equal(mirror.transactions(), 0);
  });

  test('a next hop that refuses connections defers the message with 4.4.1 and the connect error', async () => {
    const qid = await sendRaw(p.port, 'MAIL FROM:<refused@mx.test>', ['RCPT TO:<user@closed.test>'], 'Subject: closed\r\n\r\nanyone?\r\n.\r\n');
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'deferred');
    assert.equal(log.dsn, '4.4.1');
    assert.match(String(log.reply), /ECONNREFUSED/);
  });

  test('a recipient at a healthy destination is delivered at once even when another recipient\'s destination is down', async () => {
    // Three failed jobs in a row mark closed.test as down for a while (its backlog is deferred without trying).
    const down = queueIdOf(await sendMessage(p.port, 'down@mx.test', ['d1', 'd2', 'd3', 'd4', 'd5'].map((u) => `${u}@closed.test`), 'Subject: down\n\nx\n'));
    await p.waitLog((l) => l.event === 'delivery' && l.qid === down && l.to === 'd5@closed.test');
    const before = full.messages.length;
    const qid = queueIdOf(await sendMessage(p.port, 'mixed@mx.test', ['x@closed.test', 'y@remote.test'], 'Subject: mixed\n\nhalf\n'));
    const msgs = await full.waitMessages(before + 1);
    assert.deepEqual(msgs[before]!.rcpts.map((r) => r.address), ['y@remote.test']);
    const y = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.to === 'y@remote.test');
    assert.equal(y.status, 'sent', `first attempt for y: ${String(y.reply)}`);
    const x = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.to === 'x@closed.test');
    assert.equal(x.status, 'deferred');
  });
});

describe('SMTPUTF8 to a peer without it', () => {
  let ascii: SmtpPeer;
  let p: Running;
  before(async () => {
    ascii = await startSmtpPeer({ extensions: { smtputf8: false } });
    p = await startPalisade({ toml: `[transport]\n"ascii.test" = "smtp:[127.0.0.1]:${ascii.port}"\n${FAST}` });
  });
  after(async () => {
    const code = await p?.stop();
    await ascii?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('a message sent with SMTPUTF8 but all ASCII in envelope and header goes on without the parameter (RFC 6531 §3.2)', async () => {
    const qid = await sendRaw(p.port, 'MAIL FROM:<plain@mx.test> SMTPUTF8', ['RCPT TO:<bob@ascii.test>'], Buffer.from('Subject: plain\r\n\r\nk\u00e4se in the body only\r\n.\r\n', 'utf8'));
    const [m] = await ascii.waitMessages(1);
    assert.equal(m!.mailParams.SMTPUTF8, undefined, 'MAIL without SMTPUTF8');
    assert.equal(m!.mailParams.BODY, '8BITMIME', 'the 8-bit body is declared as such');
    assert.equal((await p.waitLog((l) => l.event === 'delivery' && l.qid === qid)).status, 'sent');
  });

  test('UTF-8 in a header field still needs SMTPUTF8: bounced with 5.6.7', async () => {
    const qid = await sendRaw(p.port, 'MAIL FROM:<plain@mx.test> SMTPUTF8', ['RCPT TO:<carol@ascii.test>'], Buffer.from('Subject: gr\u00fc\u00dfe\r\n\r\nhi\r\n.\r\n', 'utf8'));
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'bounced');
    assert.equal(log.dsn, '5.6.7');
    assert.equal(ascii.messages.length, 1, 'only the first message reached the peer');
  });
});

describe('a next hop with a small recipient limit', () => {
  let limited: SmtpPeer;
  let p: Running;
  before(async () => {
    limited = await startSmtpPeer({ maxRcpts: 2 });
    p = await startPalisade({ toml: `[transport]\n"limited.test" = "smtp:[127.0.0.1]:${limited.port}"\n[queue]\nretry_min = "60s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\n` });
  });
  after(async () => {
    const code = await p?.stop();
    await limited?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('recipients refused with 452 4.5.3 go at once in further transactions (RFC 5321 §4.5.3.1.10), none deferred', async () => {
    const rcpts = ['a', 'b', 'c', 'd', 'e'].map((x) => `${x}@limited.test`);
    const qid = await sendRaw(p.port, 'MAIL FROM:<sender@client.test>', rcpts.map((r) => `RCPT TO:<${r}>`), 'Subject: many\r\n\r\nhello\r\n.\r\n');
    const msgs = await limited.waitMessages(3, 10_000);
    assert.deepEqual(msgs.map((m) => m.rcpts.map((r) => r.address)), [['a@limited.test', 'b@limited.test'], ['c@limited.test', 'd@limited.test'], ['e@limited.test']]);
    assert.equal(limited.connections.total, 1, 'all on one connection');
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    const outcomes = p.logs().filter((l) => l.event === 'delivery' && l.qid === qid).map((l) => l.status);
    assert.deepEqual(outcomes, ['sent', 'sent', 'sent', 'sent', 'sent']);
  });
});
