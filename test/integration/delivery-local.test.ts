// SPDX-License-Identifier: MIT
// Final delivery on this host: Maildir files with Return-Path: and Delivered-To:, aliases(5) expanded
// (local lists, forwarding to a remote address through the next hop), known recipients checked at RCPT.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startPalisade, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { header, maildir, parseDsn, waitMaildir } from '../support/mailbox.ts';

describe('local delivery', () => {
  let peer: SmtpPeer;
  let p: Running;
  let etc: string;
  before(async () => {
    peer = await startSmtpPeer();
    etc = mkdtempSync(join(tmpdir(), 'palisade-aliases-'));
    writeFileSync(join(etc, 'staff'), '# included list\nalice\ncarol, :include:' + join(etc, 'more') + '\n');
    writeFileSync(join(etc, 'more'), 'bob\n');
    writeFileSync(join(etc, 'aliases'), '# test aliases\nteam: alice, bob\nmixed: carol, ghost\nfwd: someone@remote.test\nboth: carol, other@remote.test\ncmd: "|/bin/true"\n' +
      `staff: :include:${join(etc, 'staff')}\n`);
    p = await startPalisade({
      toml: `[local]\nrecipients = ["alice", "bob", "carol"]\naliases = "file:${join(etc, 'aliases')}"\n` +
        `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n[queue]\nscan_interval = "200ms"\n[delivery]\nworkers = 1\n`,
    });
  });
  after(async () => {
    const code = await p?.stop();
    await peer?.close();
    if (etc) rmSync(etc, { recursive: true, force: true });
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  /** Sends `body` from `from` to `rcpts`, asserting each RCPT reply; returns the queue ID. */
  async function send(from: string, rcpts: [string, number][], body: string): Promise<string> {
    const c = await openSession(p.port);
    try {
      await c.ok(`MAIL FROM:<${from}>`);
      for (const [r, code] of rcpts) await c.ok(`RCPT TO:<${r}>`, code);
      await c.ok('DATA', 354);
      c.write(body.replace(/\n/g, '\r\n') + '.\r\n');
      return queueIdOf(await c.expect(250));
    } finally {
      c.close();
    }
  }

  test('a message to a local user lands in <mail>/<user>/new with Return-Path:, Delivered-To:, then the message', async () => {
    const body = 'Subject: hello alice\nMessage-ID: <local-1@client.test>\n\nfirst line\n..dot line\n';
    const qid = await send('sender@client.test', [['alice@mx.test', 250]], body);
    const [raw] = await waitMaildir(p.dir, 'alice');
    const text = raw!.toString('utf8');
    assert.match(text, /^Return-Path: <sender@client\.test>\nDelivered-To: alice@mx\.test\nReceived: /);
    assert.ok(text.endsWith('Subject: hello alice\nMessage-ID: <local-1@client.test>\n\nfirst line\n.dot line\n'), 'message bytes follow our headers, dot-unstuffed');
    assert.ok(!text.includes('\r'), 'a Maildir file has LF line ends, not SMTP\'s CRLF');
    assert.match(header(raw!, 'Received')!, new RegExp(qid));
    const box = join(p.dir, 'var/mail/alice');
    for (const sub of ['tmp', 'new', 'cur']) assert.ok(statSync(join(box, sub)).isDirectory(), `${sub}/ exists`);
    assert.deepEqual(readdirSync(join(box, 'tmp')), [], 'nothing left in tmp/');
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'sent');
    assert.equal(log.relay, 'local');
  });

  test('an alias is accepted at RCPT and expands to each member\'s Maildir; an unknown user is refused at RCPT', async () => {
    const before = { alice: maildir(p.dir, 'alice').length, bob: maildir(p.dir, 'bob').length };
    const qid = await send('sender@client.test', [['team@mx.test', 250], ['nobody@mx.test', 550]], 'Subject: to the team\n\nstand-up at ten\n');
    const bob = await waitMaildir(p.dir, 'bob', before.bob + 1);
    const alice = await waitMaildir(p.dir, 'alice', before.alice + 1);
    for (const [who, raw] of [['alice', alice.at(-1)!], ['bob', bob.at(-1)!]] as const) {
      assert.equal(header(raw, 'Return-Path'), '<sender@client.test>');
      assert.equal(header(raw, 'Delivered-To'), `${who}@mx.test`);
      assert.match(raw.toString('utf8'), /stand-up at ten/);
    }
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    assert.equal(maildir(p.dir, 'team').length, 0, 'no mailbox is made for the alias itself');
  });

  test('a user named twice in one message, directly and through an alias, gets one copy', async () => {
    const before = maildir(p.dir, 'alice').length;
    const qid = await send('sender@client.test', [['alice@mx.test', 250], ['team@mx.test', 250]], 'Subject: twice\n\nonce please\n');
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    await sleep(200);
    assert.equal(maildir(p.dir, 'alice').length, before + 1);
  });

  test('an alias to a remote address forwards the message through the next hop with the original sender', async () => {
    const before = peer.messages.length;
    const qid = await send('sender@client.test', [['fwd@mx.test', 250]], 'Subject: forward me\n\nto someone\n');
    const msgs = await peer.waitMessages(before + 1);
    const m = msgs[before]!;
    assert.equal(m.from, 'sender@client.test');
    assert.deepEqual(m.rcpts.map((r) => r.address), ['someone@remote.test']);
    assert.equal(header(m.data, 'Delivered-To'), 'fwd@mx.test', 'marked for loop detection');
    assert.match(m.data.toString('utf8'), /to someone/);
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'sent');
    assert.match(String(log.reply), /forwarded as [0-9A-Z]{16}/);
  });

  test('an alias with a local and a remote member delivers to both', async () => {
    const before = peer.messages.length;
    await send('sender@client.test', [['both@mx.test', 250]], 'Subject: both\n\nhere and there\n');
    const [carol] = await waitMaildir(p.dir, 'carol');
    assert.equal(header(carol!, 'Delivered-To'), 'carol@mx.test');
    const msgs = await peer.waitMessages(before + 1);
    assert.deepEqual(msgs[before]!.rcpts.map((r) => r.address), ['other@remote.test']);
  });

  test('an :include: list (and a list it includes) is read by the delivery agent and expanded', async () => {
    const before = { alice: maildir(p.dir, 'alice').length, bob: maildir(p.dir, 'bob').length, carol: maildir(p.dir, 'carol').length };
    const qid = await send('sender@client.test', [['staff@mx.test', 250]], 'Subject: staff meeting\n\nat noon\n');
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    for (const who of ['alice', 'bob', 'carol'] as const) {
      const box = await waitMaildir(p.dir, who, before[who] + 1);
      assert.match(box.at(-1)!.toString('utf8'), /staff meeting/, `${who} got it`);
    }
  });

  test('an alias with an unknown member: the others get the message, the DSN names the member, expanded from the alias', async () => {
    const before = { alice: maildir(p.dir, 'alice').length, carol: maildir(p.dir, 'carol').length };
    const qid = await send('alice@mx.test', [['mixed@mx.test', 250]], 'Subject: to a list with a stale member\n\nhello\n');
    const carol = await waitMaildir(p.dir, 'carol', before.carol + 1);
    assert.match(carol.at(-1)!.toString('utf8'), /hello/);
    const o = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(o.status, 'bounced');
    const dsn = await parseDsn((await waitMaildir(p.dir, 'alice', before.alice + 1)).at(-1)!);
    assert.equal(dsn.recipients.length, 1);
    const r = dsn.recipients[0]!;
    assert.equal(r['final-recipient'], 'rfc822; ghost@mx.test');
    assert.equal(r['original-recipient'], 'rfc822; mixed@mx.test');
    assert.equal(r['action'], 'failed');
    assert.equal(r['status'], '5.1.1');
    assert.match(r['diagnostic-code']!, /user unknown: ghost@mx\.test/);
    assert.match(dsn.text, /<ghost@mx\.test> \(expanded from <mixed@mx\.test>\): failed/);
  });

  test('with commands off (the default) a "|command" alias bounces 5.7.1 to the sender', async () => {
    const before = maildir(p.dir, 'alice').length;
    const qid = await send('alice@mx.test', [['cmd@mx.test', 250]], 'Subject: to a command\n\nbody\n');
    const o = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(o.status, 'bounced');
    assert.equal(o.dsn, '5.7.1');
    assert.match(String(o.reply), /commands is disabled/);
    const dsn = await waitMaildir(p.dir, 'alice', before + 1);
    assert.match(header(dsn.at(-1)!, 'Subject')!, /fail|undeliver/i);
  });

  test('newaliases validates the edited alias file and puts it in use in the running Palisade', async () => {
    const file = join(etc, 'aliases');
    writeFileSync(file, '# test aliases\nteam: alice, bob\nnewlist: carol\nbroken line without a colon\n');
    const bad = await p.cli(['newaliases']);
    assert.equal(bad.code, 65, bad.stdout);
    assert.match(bad.stderr, /aliases:4: /);
    // Not in use: the old table still applies.
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<sender@client.test>');
      await c.ok('RCPT TO:<newlist@mx.test>', 550, '5.1.1');
    } finally {
      c.close();
    }

    writeFileSync(file, '# test aliases\nteam: alice, bob\nfwd: someone@remote.test\nboth: carol, other@remote.test\nnewlist: carol\n');
    const ok = await p.cli(['newaliases']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /4 aliases ok/);
    assert.match(ok.stdout, /reloaded/);
    const before = maildir(p.dir, 'carol').length;
    await send('sender@client.test', [['newlist@mx.test', 250]], 'Subject: to the new list\n\nhello list\n');
    const all = await waitMaildir(p.dir, 'carol', before + 1);
    assert.equal(header(all.at(-1)!, 'Delivered-To'), 'carol@mx.test');
  });

  test('postmaster is always accepted and delivered, even when not listed in recipients', async () => {
    await send('sender@client.test', [['postmaster@mx.test', 250]], 'Subject: hi postmaster\n\nhello\n');
    const [raw] = await waitMaildir(p.dir, 'postmaster');
    assert.equal(header(raw!, 'Delivered-To'), 'postmaster@mx.test');
  });
});
