// SPDX-License-Identifier: MIT
// Operating the queue while delivery runs: `palisade queue hold|release|delete|requeue|flush` through the
// control socket, observed in `queue list --json`, in what the next hop receives, and in exit codes.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { queueIdOf, sendMessage } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { QueueStore } from '../../src/queue/index.ts';

interface Listed { id: string; state: string; recipients: { address: string; state: string; last_reply: string | null; next_retry: string | null }[] }

const LATER = '451 4.7.1 Come back later';

describe('queue control during delivery', () => {
  let peer: SmtpPeer;
  let p: Running;
  before(async () => {
    peer = await startSmtpPeer();
    // retry_min is long: a deferred message moves only when told to.
    p = await startPalisade({
      toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n[queue]\nretry_min = "60s"\nretry_max = "60s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\n`,
    });
  });
  after(async () => {
    const code = await p?.stop();
    await peer?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  async function list(): Promise<Listed[]> {
    const r = await p.cli(['queue', 'list', '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Listed[];
  }

  async function entry(qid: string): Promise<Listed | undefined> {
    return (await list()).find((e) => e.id === qid);
  }

  /** Queues a message to `rcpt` that the peer defers; resolves once it sits in deferred/. */
  async function deferredMessage(rcpt: string): Promise<string> {
    peer.script.rcptReplies[rcpt] = LATER;
    const qid = queueIdOf(await sendMessage(p.port, 'sender@client.test', [rcpt], `Subject: ${rcpt}\n\nqueued\n`));
    // Polled in-process (the CLI costs a Node start per call); the assertions below use the CLI.
    const store = new QueueStore(p.spool);
    await waitFor(`${qid} deferred`, async () => ((await store.locate(qid)) === 'deferred' ? true : undefined));
    return qid;
  }

  const deliveredTo = (rcpt: string) => peer.messages.filter((m) => m.rcpts.some((r) => r.address === rcpt)).length;

  test('a deferred message is listed as deferred with the last reply and the next retry, and "queue show" says the same', async () => {
    const qid = await deferredMessage('show@remote.test');
    const e = (await entry(qid))!;
    assert.equal(e.recipients[0]!.state, 'deferred');
    assert.equal(e.recipients[0]!.last_reply, LATER);
    const next = Date.parse(e.recipients[0]!.next_retry!);
    assert.ok(next - Date.now() > 30_000, `next retry ${e.recipients[0]!.next_retry} is about retry_min away`);
    const show = await p.cli(['queue', 'show', qid]);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /^state: +deferred$/m);
    assert.ok(show.stdout.includes(LATER), show.stdout);
  });

  test('hold keeps a message from delivery; release delivers it', async () => {
    const qid = await deferredMessage('held@remote.test');
    const h = await p.cli(['queue', 'hold', qid]);
    assert.equal(h.code, 0, h.stderr);
    assert.equal((await entry(qid))?.state, 'hold');
    delete peer.script.rcptReplies['held@remote.test'];
    // A flush retries every deferred message, but not a held one.
    assert.equal((await p.cli(['queue', 'flush'])).code, 0);
    await sleep(500);
    assert.equal(deliveredTo('held@remote.test'), 0, 'not delivered while held');
    assert.equal(await new QueueStore(p.spool).locate(qid), 'hold');

    const r = await p.cli(['queue', 'release', qid]);
    assert.equal(r.code, 0, r.stderr);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'sent');
    assert.equal(deliveredTo('held@remote.test'), 1);
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    assert.equal(await new QueueStore(p.spool).locate(qid), null);
  });

  test('delete removes a message for good: exit 0, gone from the list, never delivered', async () => {
    const qid = await deferredMessage('deleted@remote.test');
    const d = await p.cli(['queue', 'delete', qid]);
    assert.equal(d.code, 0, d.stderr);
    delete peer.script.rcptReplies['deleted@remote.test'];
    const [again] = await Promise.all([p.cli(['queue', 'show', qid]), p.cli(['queue', 'flush'])]);
    assert.equal(again.code, 1, 'a deleted ID is unknown');
    await sleep(500);
    assert.equal(deliveredTo('deleted@remote.test'), 0);
  });

  test('requeue retries one deferred message at once, long before its next retry', async () => {
    const qid = await deferredMessage('requeued@remote.test');
    const other = await deferredMessage('waiting@remote.test');
    delete peer.script.rcptReplies['requeued@remote.test'];
    delete peer.script.rcptReplies['waiting@remote.test'];
    const r = await p.cli(['queue', 'requeue', qid]);
    assert.equal(r.code, 0, r.stderr);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'sent', 10_000);
    assert.equal(deliveredTo('requeued@remote.test'), 1);
    await sleep(500);
    assert.equal(deliveredTo('waiting@remote.test'), 0, 'only the requeued message was retried');
    assert.equal(await new QueueStore(p.spool).locate(other), 'deferred');
    // flush then retries everything that is deferred.
    assert.equal((await p.cli(['queue', 'flush'])).code, 0);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === other && l.status === 'sent', 10_000);
    assert.equal(deliveredTo('waiting@remote.test'), 1);
  });

  test('flush retries every deferred message at once', async () => {
    const a = await deferredMessage('flush-a@remote.test');
    const b = await deferredMessage('flush-b@remote.test');
    delete peer.script.rcptReplies['flush-a@remote.test'];
    delete peer.script.rcptReplies['flush-b@remote.test'];
    const f = await p.cli(['queue', 'flush']);
    assert.equal(f.code, 0, f.stderr);
    await p.waitLog((l) => l.event === 'removed' && l.qid === a, 10_000);
    await p.waitLog((l) => l.event === 'removed' && l.qid === b, 10_000);
    assert.equal(deliveredTo('flush-a@remote.test'), 1);
    assert.equal(deliveredTo('flush-b@remote.test'), 1);
  });

  test('hold, release, delete and requeue of an unknown queue ID exit 1', async () => {
    const cmds = ['hold', 'release', 'delete', 'requeue'];
    const results = await Promise.all(cmds.map((cmd) => p.cli(['queue', cmd, '0000000000000000'])));
    results.forEach((r, i) => {
      assert.equal(r.code, 1, `queue ${cmds[i]}: ${r.stderr}`);
      assert.match(r.stderr, /0000000000000000/);
    });
  });
});

describe('queue control at the limits', () => {
  let peer: SmtpPeer;
  let hung: SmtpPeer;
  let p: Running;
  before(async () => {
    peer = await startSmtpPeer();
    hung = await startSmtpPeer({ hang: true });
    // One message in the active set at a time; a short lifetime; the hung peer holds its delivery for 3 s.
    p = await startPalisade({
      toml: `[transport]\n"hang.test" = "smtp:[127.0.0.1]:${hung.port}"\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n` +
        '[queue]\nactive_limit = 1\nretry_min = "60s"\nretry_max = "60s"\nlifetime = "6s"\ndelay_warning = "0s"\nscan_interval = "200ms"\n' +
        '[delivery]\nworkers = 1\ntimeout = "3s"\n',
    });
  });
  after(async () => {
    const code = await p?.stop();
    await Promise.all([peer?.close(), hung?.close()]);
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  const store = () => new QueueStore(p.spool);
  const deliveredTo = (rcpt: string) => peer.messages.filter((m) => m.rcpts.some((r) => r.address === rcpt)).length;

  async function heldMessage(rcpt: string): Promise<string> {
    peer.script.rcptReplies[rcpt] = LATER;
    const qid = queueIdOf(await sendMessage(p.port, 'sender@client.test', [rcpt], `Subject: ${rcpt}\n\nqueued\n`));
    await waitFor(`${qid} deferred`, async () => ((await store().locate(qid)) === 'deferred' ? true : undefined));
    assert.equal((await p.cli(['queue', 'hold', qid])).code, 0);
    delete peer.script.rcptReplies[rcpt];
    return qid;
  }

  test('release while the active set is full: the message leaves hold at once and is delivered when there is room', async () => {
    const qid = await heldMessage('released@remote.test');
    // The hung destination takes the only active slot for its 3 s timeout.
    const busy = queueIdOf(await sendMessage(p.port, 'sender@client.test', ['stuck@hang.test'], 'Subject: stuck\n\nx\n'));
    await hung.waitConnections(1, 5_000);
    const r = await p.cli(['queue', 'release', qid]);
    assert.equal(r.code, 0, r.stderr);
    assert.notEqual(await store().locate(qid), 'hold', 'released means out of hold, even with no room to deliver yet');
    await p.waitLog((l) => l.event === 'delivery' && l.qid === busy, 10_000);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'sent', 10_000);
    assert.equal(deliveredTo('released@remote.test'), 1);
  });

  test('a held message past its lifetime bounces with 5.4.7 without another delivery attempt', async () => {
    const qid = await heldMessage('expires@remote.test');
    const bounced = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status !== 'deferred', 15_000);
    assert.equal(bounced.status, 'bounced');
    assert.equal(bounced.dsn, '5.4.7');
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    assert.equal(deliveredTo('expires@remote.test'), 0, 'the peer accepts it now, but a held message is not delivered');
    // The sender is told (its DSN goes to the peer, from <>).
    await waitFor('the failure DSN', () => (peer.messages.some((m) => m.from === '' && m.rcpts.some((x) => x.address === 'sender@client.test')) ? true : undefined));
  });
});
