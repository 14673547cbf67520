// SPDX-License-Identifier: MIT
// Temporary failures: retries with exponential backoff (retry_min doubling up to retry_max) while
// `queue list` shows the last reply and the next retry; the queue lifetime ends in a 5.4.7 bounce, with a
// delay warning DSN before it.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade, type Running } from '../support/palisade.ts';
import { sendMessage, queueIdOf } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { parseDsn, waitMaildir } from '../support/mailbox.ts';

interface ListedRcpt { address: string; state: string; last_reply: string | null; next_retry: string | null }
interface Listed { id: string; state: string; sender: string; recipients: ListedRcpt[] }

async function listed(p: Running, qid: string): Promise<Listed | undefined> {
  const r = await p.cli(['queue', 'list', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as Listed[]).find((e) => e.id === qid);
}

const ms = (l: Record<string, unknown>) => Date.parse(String(l.time));

describe('retries after temporary failures', () => {
  let peer: SmtpPeer;
  let p: Running;
  before(async () => {
    peer = await startSmtpPeer();
    p = await startPalisade({
      toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n[queue]\nretry_min = "1s"\nretry_max = "4s"\nscan_interval = "200ms"\n` +
        '[delivery]\nworkers = 1\ntimeout = "5s"\nconnect_timeout = "2s"\n',
    });
  });
  after(async () => {
    const code = await p?.stop();
    await peer?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('a recipient tempfailed twice is listed as deferred, then delivered once after backoff of retry_min, then double', async () => {
    peer.script.tempfailRcpt = 2;
    const qid = queueIdOf(await sendMessage(p.port, 'sender@client.test', ['retry@remote.test'], 'Subject: retry\n\nagain\n'));
    const first = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(first.status, 'deferred');
    assert.equal(first.reply, '451 4.3.0 Try again later');
    assert.equal(first.dsn, '4.3.0');

    const e = await listed(p, qid);
    assert.ok(e !== undefined, 'the message is still queued');
    assert.ok(['deferred', 'active'].includes(e.state), `message state ${e.state}`);
    const r = e.recipients[0]!;
    assert.equal(r.state, 'deferred');
    assert.equal(r.last_reply, '451 4.3.0 Try again later');
    assert.ok(r.next_retry !== null && Date.parse(r.next_retry) > ms(first), `next_retry ${r.next_retry} is after the attempt`);

    const [m] = await peer.waitMessages(1, 20_000);
    assert.deepEqual(m!.rcpts.map((x) => x.address), ['retry@remote.test']);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'sent');
    const attempts = p.logs().filter((l) => l.event === 'delivery' && l.qid === qid);
    assert.deepEqual(attempts.map((l) => l.status), ['deferred', 'deferred', 'sent']);
    const gap1 = ms(attempts[1]!) - ms(attempts[0]!);
    const gap2 = ms(attempts[2]!) - ms(attempts[1]!);
    assert.ok(gap1 >= 900, `first retry waited retry_min (1s), not ${gap1} ms`);
    assert.ok(gap2 >= 1900, `second retry waited twice retry_min (2s), not ${gap2} ms`);
    assert.ok(gap2 < 3500, `second retry came after ${gap2} ms: the delay doubled once, not twice`);
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    assert.equal(await listed(p, qid), undefined, 'gone from the queue after delivery');
    assert.equal(peer.messages.length, 1, 'delivered exactly once');
  });

  test('a 4xx after the final dot is retried and the message arrives once', async () => {
    const before = peer.messages.length;
    peer.script.tempfailData = 1;
    const qid = queueIdOf(await sendMessage(p.port, 'sender@client.test', ['dot@remote.test'], 'Subject: dot\n\nretry after data\n'));
    const msgs = await peer.waitMessages(before + 1, 10_000);
    assert.deepEqual(msgs[before]!.rcpts.map((x) => x.address), ['dot@remote.test']);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'sent');
    const attempts = p.logs().filter((l) => l.event === 'delivery' && l.qid === qid).map((l) => l.status);
    assert.deepEqual(attempts, ['deferred', 'sent']);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(peer.messages.length, before + 1);
  });
});

describe('the queue lifetime', () => {
  let peer: SmtpPeer;
  let p: Running;
  before(async () => {
    peer = await startSmtpPeer({ tempfailRcpt: Number.MAX_SAFE_INTEGER, tempfailReply: '450 4.2.0 Mailbox busy' });
    p = await startPalisade({
      toml: `[transport]\n"remote.test" = "smtp:[127.0.0.1]:${peer.port}"\n` +
        '[queue]\nretry_min = "500ms"\nretry_max = "1s"\nlifetime = "3s"\ndelay_warning = "1s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\ntimeout = "5s"\n',
    });
  });
  after(async () => {
    const code = await p?.stop();
    await peer?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('a message tempfailed until its lifetime ends gets a delay warning, then a 5.4.7 failure DSN, and leaves the queue', async () => {
    const qid = queueIdOf(await sendMessage(p.port, 'patient@mx.test', ['busy@remote.test'], 'Subject: patience\n\nwill expire\n'));
    const boxes = await waitMaildir(p.dir, 'patient', 2, 20_000);
    const [delay, failure] = await Promise.all(boxes.map((b) => parseDsn(b)));

    assert.equal(delay!.recipients.length, 1);
    const d = delay!.recipients[0]!;
    assert.equal(d['final-recipient'], 'rfc822; busy@remote.test');
    assert.equal(d['action'], 'delayed');
    assert.match(d['status']!, /^4\./);
    assert.match(d['diagnostic-code']!, /450 4\.2\.0 Mailbox busy/);
    assert.ok(d['will-retry-until'] !== undefined, 'a delay DSN says until when it retries');
    assert.match(delay!.email.subject ?? '', /delayed/i);

    assert.equal(failure!.recipients.length, 1);
    const f = failure!.recipients[0]!;
    assert.equal(f['final-recipient'], 'rfc822; busy@remote.test');
    assert.equal(f['action'], 'failed');
    assert.equal(f['status'], '5.4.7');
    assert.match(f['diagnostic-code']!, /450 4\.2\.0 Mailbox busy/, 'the failure DSN gives the last reply');
    assert.equal(failure!.message['x-palisade-queue-id'], qid);
    assert.equal(failure!.message['reporting-mta'], 'dns; mx.test');

    const expired = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'bounced');
    assert.equal(expired.dsn, '5.4.7');
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    assert.equal(await listed(p, qid), undefined);
    assert.equal(peer.messages.length, 0);
    const dsns = p.logs().filter((l) => l.event === 'dsn' && l.qid === qid).map((l) => l.action);
    assert.deepEqual(dsns, ['delayed', 'failed'], 'one delay warning, one failure DSN');
  });
});
