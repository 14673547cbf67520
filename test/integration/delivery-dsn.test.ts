// SPDX-License-Identifier: MIT
// Delivery status notifications as the sender receives them (RFC 3464, RFC 3461): one failure DSN naming
// exactly the refused recipients, NOTIFY=SUCCESS and NOTIFY=NEVER honoured, RET and ENVID and ORCPT
// echoed, and never a bounce for a bounce.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startPalisade, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf, sendMessage } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { header, maildir, parseDsn, waitMaildir } from '../support/mailbox.ts';

/** Sends a message with explicit MAIL/RCPT lines; returns its queue ID. */
async function send(port: number, mail: string, rcpts: string[], body = 'Subject: dsn test\r\nMessage-ID: <dsn-test@client.test>\r\n\r\nbody line\r\n'): Promise<string> {
  const c = await openSession(port);
  try {
    await c.ok(mail);
    for (const r of rcpts) await c.ok(r);
    await c.ok('DATA', 354);
    c.write(body + '.\r\n');
    return queueIdOf(await c.expect(250));
  } finally {
    c.close();
  }
}

describe('delivery status notifications', () => {
  let peer: SmtpPeer;
  let plain: SmtpPeer;
  let p: Running;
  before(async () => {
    peer = await startSmtpPeer({
      rcptReplies: { 'b@remote.test': '550 5.1.1 <b@remote.test>: Recipient address rejected: no such user', 'nobody@remote.test': '550 5.1.1 No such user here' },
    });
    plain = await startSmtpPeer({ extensions: { dsn: false } });
    // Every sender below is a local user (mx.test is a local domain): its DSNs land in its Maildir.
    p = await startPalisade({
      toml: `[transport]\n"remote.test" = "smtp:[127.0.0.1]:${peer.port}"\n"sender.test" = "smtp:[127.0.0.1]:${peer.port}"\n` +
        `"plain.test" = "smtp:[127.0.0.1]:${plain.port}"\n` +
        '[queue]\nretry_min = "1s"\nretry_max = "2s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\ntimeout = "5s"\n',
    });
  });
  after(async () => {
    const code = await p?.stop();
    await Promise.all([peer?.close(), plain?.close()]);
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  /** Waits until `qid` has left the queue (every recipient sent or bounced, DSNs injected). */
  const removed = (qid: string) => p.waitLog((l) => l.event === 'removed' && l.qid === qid);

  test('a 5xx for one of three recipients gives exactly one DSN, naming only that recipient with the remote reply', async () => {
    const qid = await send(p.port, 'MAIL FROM:<alice@mx.test>', ['RCPT TO:<a@remote.test>', 'RCPT TO:<b@remote.test>', 'RCPT TO:<c@remote.test>']);
    const [m] = await peer.waitMessages(1);
    assert.deepEqual(m!.rcpts.map((r) => r.address), ['a@remote.test', 'c@remote.test']);
    await removed(qid);
    const [raw] = await waitMaildir(p.dir, 'alice');
    const dsn = await parseDsn(raw!);
    assert.match(dsn.contentType, /^multipart\/report;.*report-type="?delivery-status/);
    assert.equal(header(raw!, 'From')?.includes('MAILER-DAEMON@mx.test'), true);
    assert.equal(header(raw!, 'Return-Path'), '<>', 'a DSN comes from the null sender');
    assert.equal(header(raw!, 'Auto-Submitted'), 'auto-replied');
    assert.equal(dsn.recipients.length, 1);
    const r = dsn.recipients[0]!;
    assert.equal(r['final-recipient'], 'rfc822; b@remote.test');
    assert.equal(r['action'], 'failed');
    assert.equal(r['status'], '5.1.1');
    assert.match(r['diagnostic-code']!, /^smtp; 550 5\.1\.1 <b@remote\.test>: Recipient address rejected: no such user$/);
    assert.match(r['remote-mta'] ?? '', /127\.0\.0\.1/);
    assert.equal(dsn.message['x-palisade-queue-id'], qid);
    assert.ok(dsn.message['arrival-date'] !== undefined);
    assert.match(dsn.text, /b@remote\.test/);
    assert.doesNotMatch(dsn.text, /a@remote\.test|c@remote\.test/);
    // A small message comes back whole by default.
    assert.equal(dsn.original?.type, 'message/rfc822');
    assert.match(dsn.original!.bytes.toString('utf8'), /body line/);
    await sleep(300);
    assert.equal(maildir(p.dir, 'alice').length, 1, 'exactly one DSN');
    assert.equal(peer.messages.length, 1, 'the other two were delivered once');
  });

  test('RET=HDRS returns only the headers; ENVID and ORCPT are echoed', async () => {
    const qid = await send(p.port, 'MAIL FROM:<hdrs@mx.test> RET=HDRS ENVID=track+2B42', ['RCPT TO:<b@remote.test> ORCPT=rfc822;original+40example.org']);
    await removed(qid);
    const [raw] = await waitMaildir(p.dir, 'hdrs');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.message['original-envelope-id'], 'track+42');
    assert.equal(dsn.recipients[0]!['original-recipient'], 'rfc822; original@example.org');
    assert.equal(dsn.original?.type, 'text/rfc822-headers');
    const orig = dsn.original!.bytes.toString('utf8');
    assert.match(orig, /^Subject: dsn test$/m);
    assert.doesNotMatch(orig, /body line/);
  });

  test('NOTIFY=NEVER: a refused recipient gives no DSN', async () => {
    const qid = await send(p.port, 'MAIL FROM:<never@mx.test>', ['RCPT TO:<b@remote.test> NOTIFY=NEVER']);
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'bounced');
    await removed(qid);
    await sleep(500);
    assert.equal(maildir(p.dir, 'never').length, 0);
    assert.equal(p.logs().filter((l) => l.event === 'dsn' && l.qid === qid).length, 0);
  });

  test('NOTIFY=SUCCESS on final delivery gives a success DSN with Action: delivered', async () => {
    const qid = await send(p.port, 'MAIL FROM:<happy@mx.test> ENVID=ok-1', ['RCPT TO:<friend@mx.test> NOTIFY=SUCCESS']);
    await removed(qid);
    const [delivered] = await waitMaildir(p.dir, 'friend');
    assert.match(delivered!.toString('utf8'), /body line/);
    const [raw] = await waitMaildir(p.dir, 'happy');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.recipients.length, 1);
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; friend@mx.test');
    assert.equal(dsn.recipients[0]!['action'], 'delivered');
    assert.match(dsn.recipients[0]!['status']!, /^2\./);
    assert.equal(dsn.message['original-envelope-id'], 'ok-1');
  });

  test('NOTIFY=SUCCESS relayed to a next hop with DSN is passed on and not answered by us', async () => {
    const before = peer.messages.length;
    const qid = await send(p.port, 'MAIL FROM:<passon@mx.test>', ['RCPT TO:<a@remote.test> NOTIFY=SUCCESS']);
    const msgs = await peer.waitMessages(before + 1);
    assert.equal(msgs[before]!.rcpts[0]!.params.NOTIFY, 'SUCCESS');
    await removed(qid);
    await sleep(500);
    assert.equal(maildir(p.dir, 'passon').length, 0, 'the next hop now owns the success notice (RFC 3461 §5.2.1)');
  });

  test('NOTIFY=SUCCESS relayed to a next hop without DSN gives a DSN with Action: relayed', async () => {
    const qid = await send(p.port, 'MAIL FROM:<relayed@mx.test>', ['RCPT TO:<x@plain.test> NOTIFY=SUCCESS']);
    await plain.waitMessages(1);
    await removed(qid);
    const [raw] = await waitMaildir(p.dir, 'relayed');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; x@plain.test');
    assert.equal(dsn.recipients[0]!['action'], 'relayed', 'RFC 3461 §5.2.2');
  });

  test('never a bounce for a bounce: a message from <> that fails permanently is held, and no DSN is sent', async () => {
    const dsnsBefore = p.logs().filter((l) => l.event === 'dsn').length;
    const qid = await send(p.port, 'MAIL FROM:<>', ['RCPT TO:<b@remote.test>'], 'Subject: I am a bounce\r\n\r\nreturned mail\r\n');
    await p.waitLog((l) => l.event === 'held' && l.qid === qid);
    const r = await p.cli(['queue', 'list', '--json']);
    const e = (JSON.parse(r.stdout) as { id: string; state: string; sender: string }[]).find((x) => x.id === qid);
    assert.equal(e?.state, 'hold');
    assert.equal(e?.sender, '');
    assert.equal(p.logs().filter((l) => l.event === 'dsn').length, dsnsBefore, 'no DSN was injected');
    assert.ok(p.logs().some((l) => l.event === 'double-bounce' && l.qid === qid));
    // The postmaster can look and retry: the held recipient is not final, so a release tries it again.
    assert.equal((e as unknown as { recipients: { state: string }[] }).recipients[0]!.state, 'deferred');
    const attempts = () => p.logs().filter((l) => l.event === 'delivery' && l.qid === qid).length;
    const before = attempts();
    assert.equal((await p.cli(['queue', 'release', qid])).code, 0);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && attempts() > before);
  });

  test('a message from <> is held only once its other recipients are done: the deferred one is still delivered', async () => {
    peer.script.rcptReplies['later@remote.test'] = '451 4.7.1 Try again later';
    const qid = await send(p.port, 'MAIL FROM:<>', ['RCPT TO:<b@remote.test>', 'RCPT TO:<later@remote.test>'], 'Subject: two\r\n\r\nnull sender\r\n');
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.to === 'later@remote.test' && l.status === 'deferred');
    assert.ok(!p.logs().some((l) => l.event === 'held' && l.qid === qid), 'not held while a recipient is still to be tried');
    delete peer.script.rcptReplies['later@remote.test'];
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.to === 'later@remote.test' && l.status === 'sent', 15_000);
    await p.waitLog((l) => l.event === 'held' && l.qid === qid);
    const r = await p.cli(['queue', 'list', '--json']);
    const e = (JSON.parse(r.stdout) as { id: string; state: string; recipients: { address: string; state: string }[] }[]).find((x) => x.id === qid);
    assert.equal(e?.state, 'hold');
    assert.deepEqual(e?.recipients.map((x) => [x.address, x.state]), [['b@remote.test', 'deferred'], ['later@remote.test', 'sent']]);
  });

  test('a DSN of ours that cannot be delivered (its recipient refused) is held for the postmaster, not dropped', async () => {
    // nobody@remote.test is refused by the peer both as a recipient of the message and of the DSN to it.
    const r = await sendMessage(p.port, 'nobody@remote.test', ['b@remote.test'], 'Subject: doubly lost\n\nanyone?\n');
    const qid = queueIdOf(r);
    const dsnLine = await p.waitLog((l) => l.event === 'dsn' && l.qid === qid);
    const dsnQid = String(dsnLine.dsn_qid);
    await p.waitLog((l) => l.event === 'held' && l.qid === dsnQid);
    assert.ok(p.logs().some((l) => l.event === 'double-bounce' && l.qid === dsnQid));
    assert.ok(!p.logs().some((l) => l.event === 'removed' && l.qid === dsnQid), 'the DSN is not removed');
    const list = JSON.parse((await p.cli(['queue', 'list', '--json'])).stdout) as { id: string; state: string; sender: string }[];
    assert.deepEqual(list.filter((x) => x.id === dsnQid).map((x) => [x.state, x.sender]), [['hold', '']]);
  });

  test('a failure DSN travels to the sender\'s next hop from <> with NOTIFY=NEVER', async () => {
    const before = peer.messages.length;
    const r = await sendMessage(p.port, 'someone@sender.test', ['nobody@remote.test'], 'Subject: lost\n\nwhere\n');
    assert.equal(r.code, 250);
    const dsnMsg = (await peer.waitMessages(before + 1))[before];
    assert.equal(dsnMsg!.from, '');
    assert.deepEqual(dsnMsg!.rcpts.map((x) => [x.address, x.params.NOTIFY]), [['someone@sender.test', 'NEVER']]);
    const dsn = await parseDsn(dsnMsg!.data);
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; nobody@remote.test');
    assert.equal(dsn.recipients[0]!['status'], '5.1.1');
    assert.match(dsn.recipients[0]!['diagnostic-code']!, /No such user here/);
  });
});
