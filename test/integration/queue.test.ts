// SPDX-License-Identifier: MIT
// Durability and content: after 250 the message is a file in incoming/, its bytes are the sent message
// (dot-unstuffed) under one Received: field naming the queue ID, and the envelope keeps its DSN parameters.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf } from '../support/smtp-client.ts';
import { KEEP_QUEUED, readQueued, splitReceived } from '../support/queue.ts';

describe('queued messages', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  /** Sends one message with raw DATA bytes (already dot-stuffed, with the final dot) and returns its queue ID. */
  async function send(mail: string, rcpts: string[], data: string | Buffer): Promise<string> {
    const c = await openSession(p.port);
    try {
      await c.ok(mail, 250);
      for (const r of rcpts) await c.ok(r, 250);
      await c.ok('DATA', 354);
      c.write(data);
      return queueIdOf(await c.expect(250, '2.0.0'));
    } finally {
      c.close();
    }
  }

  test('after 250 the message is a file in <spool>/incoming/<ID> (or already taken on by qmgr) and "queue show ID" lists its sender and recipients', async () => {
    const id = await send('MAIL FROM:<sender@example.com>', ['RCPT TO:<one@mx.test>', 'RCPT TO:<two@mx.test>'], 'Subject: q\r\n\r\nx\r\n.\r\n');
    // qmgr hears of each commit at once, so the file may have moved on from incoming/ by now; it is never lost.
    // Checked in the order files move, so a move meanwhile may show it twice but never hides it.
    const where = ['incoming', 'active', 'deferred'].filter((d) => existsSync(join(p.spool, d, id)));
    assert.ok(where.length >= 1, `${id} is in a state directory`);
    assert.ok(!existsSync(join(p.spool, 'tmp', id)), 'nothing is left in tmp/');
    const r = await p.cli(['queue', 'show', id]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^id: +${id}$`, 'm'));
    assert.match(r.stdout, /^state: +(incoming|active|deferred)$/m);
    assert.match(r.stdout, /^sender: +sender@example\.com$/m);
    assert.match(r.stdout, /^ {2}one@mx\.test {2}state=(pending|deferred)/m);
    assert.match(r.stdout, /^ {2}two@mx\.test {2}state=(pending|deferred)/m);
  });

  test('"queue list --json" gives the contract shape for a queued message', async () => {
    const id = await send('MAIL FROM:<>', ['RCPT TO:<one@mx.test>'], 'Subject: q\r\n\r\nx\r\n.\r\n');
    const r = await p.cli(['queue', 'list', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const entry = (JSON.parse(r.stdout) as Record<string, unknown>[]).find((e) => e.id === id);
    assert.ok(entry !== undefined, `${id} is listed`);
    assert.deepEqual(Object.keys(entry).sort(), ['arrival', 'id', 'recipients', 'sender', 'state']);
    assert.match(entry.state as string, /^(incoming|active|deferred)$/);
    assert.equal(entry.sender, '');
    assert.ok(!Number.isNaN(Date.parse(entry.arrival as string)), 'arrival is an RFC 3339 time');
    const rcpts = entry.recipients as Record<string, unknown>[];
    assert.equal(rcpts.length, 1);
    assert.deepEqual(Object.keys(rcpts[0]!).sort(), ['address', 'last_reply', 'next_retry', 'state']);
    assert.equal(rcpts[0]!.address, 'one@mx.test');
    assert.match(rcpts[0]!.state as string, /^(pending|deferred)$/);
  });

  test('the stored message is the sent one, dot-unstuffed, under exactly one new Received: field with the queue ID', async () => {
    const sent = 'Received: from earlier.test by relay.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n' +
      'Subject: content\r\nX-8bit: caf\xe9\r\n\r\n' +
      '.leading dot\r\n..two\r\n.\r\n' + // stuffed on the wire ("..", "...", ".."), unstuffed on disk
      'trailing spaces   \r\n\tand a tab\r\n\r\n\r\n';
    const wire = sent.replace(/^\./gm, '..') + '.\r\n';
    const id = await send('MAIL FROM:<sender@example.com> BODY=8BITMIME', ['RCPT TO:<one@mx.test>'], Buffer.from(wire, 'latin1'));
    const q = await readQueued(p.spool, id);
    const { received, rest } = splitReceived(q.message);
    assert.equal(rest.toString('latin1'), sent);
    assert.match(received, new RegExp(`^Received: from client\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby mx\\.test \\(Palisade\\) with ESMTP id ${id}\\r\\n\\tfor <one@mx\\.test>;`));
    assert.equal((q.message.toString('latin1').match(/^Received:/gm) ?? []).length, 2, 'ours plus the one the client sent');
    assert.equal(createHash('sha256').update(q.message).digest('hex'), q.sha256, 'end record holds the SHA-256 of the message');
  });

  test('DSN parameters NOTIFY, ORCPT, RET and ENVID are kept in the queue', async () => {
    const id = await send('MAIL FROM:<sender@example.com> RET=HDRS ENVID=QQ+2B314', [
      'RCPT TO:<one@mx.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;one+2Bx@orig.test',
      'RCPT TO:<two@mx.test> NOTIFY=NEVER',
      'RCPT TO:<three@mx.test>',
    ], 'Subject: dsn\r\n\r\nx\r\n.\r\n');
    const q = await readQueued(p.spool, id);
    assert.equal(q.envelope.ret, 'HDRS');
    assert.equal(q.envelope.envid, 'QQ+314');
    assert.deepEqual(q.envelope.recipients, [
      { address: 'one@mx.test', notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;one+x@orig.test' },
      { address: 'two@mx.test', notify: [] },
      { address: 'three@mx.test' },
    ]);
    const r = await p.cli(['queue', 'show', id]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^envid: +QQ\+314$/m);
    assert.match(r.stdout, /^ret: +HDRS$/m);
    assert.match(r.stdout, /^ {2}one@mx\.test {2}state=\w+ notify=SUCCESS,FAILURE orcpt=rfc822;one\+x@orig\.test$/m);
    assert.match(r.stdout, /^ {2}two@mx\.test {2}state=\w+ notify=NEVER$/m);
  });

  test('bad DSN parameters are refused with 501 5.5.4', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com> RET=BODY', 501, '5.5.4');
      await c.ok('MAIL FROM:<a@example.com> ENVID=bad+zz', 501, '5.5.4');
      await c.ok('MAIL FROM:<a@example.com>', 250);
      await c.ok('RCPT TO:<one@mx.test> NOTIFY=SOMETIMES', 501, '5.5.4');
      await c.ok('RCPT TO:<one@mx.test> ORCPT=nosemicolon', 501, '5.5.4');
    } finally {
      c.close();
    }
  });

  test('duplicate recipients are queued once', async () => {
    const id = await send('MAIL FROM:<a@example.com>', ['RCPT TO:<one@mx.test>', 'RCPT TO:<ONE@MX.TEST>', 'RCPT TO:<one@mx.test>'], 'Subject: d\r\n\r\nx\r\n.\r\n');
    assert.deepEqual((await readQueued(p.spool, id)).envelope.recipients.map((r) => r.address), ['one@mx.test']);
  });

  test('a 3 MB message with long lines arrives byte-identical', async () => {
    const line = 'L'.repeat(20_000) + '\r\n';
    const body = 'Subject: big\r\n\r\n' + line.repeat(150) + '.dotted\r\n';
    const id = await send('MAIL FROM:<a@example.com>', ['RCPT TO:<one@mx.test>'], body.replace(/^\./gm, '..') + '.\r\n');
    const q = await readQueued(p.spool, id);
    const rest = splitReceived(q.message).rest;
    assert.equal(rest.length, body.length);
    assert.ok(rest.equals(Buffer.from(body)), 'same bytes');
  });

  test('a large message in big BDAT chunks sent in one write arrives byte-identical', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<one@mx.test>');
      const line = 'B'.repeat(998) + '\r\n';
      const chunks = [0, 1, 2].map((i) => (i === 0 ? 'Subject: chunks\r\n\r\n' : '') + `chunk ${i}\r\n` + line.repeat(400));
      const bdat = (chunk: string, last: boolean) => `BDAT ${Buffer.byteLength(chunk)}${last ? ' LAST' : ''}\r\n${chunk}`;
      c.write(bdat(chunks[0]!, false) + bdat(chunks[1]!, false) + bdat(chunks[2]!, true));
      await c.expect(250, '2.0.0');
      await c.expect(250, '2.0.0');
      const q = await readQueued(p.spool, queueIdOf(await c.expect(250, '2.0.0')));
      assert.ok(splitReceived(q.message).rest.equals(Buffer.from(chunks.join(''))), 'same bytes');
    } finally {
      c.close();
    }
  });
});

// cleanup keeps queue files ready in incoming/ (reserved, write-only until a message is committed in them):
// nobody may take them for messages.
describe('reserved queue files', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({
      workers: 1,
      toml: `
[transport]
"*" = "lmtp:unix:/nonexistent-palisade-test/lmtp.sock"
"mx.test" = "lmtp:unix:/nonexistent-palisade-test/lmtp.sock"
[queue]
scan_interval = "100ms"
retry_min = "1h"
retry_max = "1h"
`,
    });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  const reserved = () => readdirSync(join(p.spool, 'incoming')).filter((n) => (statSync(join(p.spool, 'incoming', n)).mode & 0o600) !== 0o600);

  test('sit write-only in incoming/, are not listed, shown or taken by the queue manager, and become messages', async () => {
    const ready = await waitFor('reserved files in incoming/', () => (reserved().length > 0 ? reserved() : undefined));
    for (const id of ready) assert.equal(statSync(join(p.spool, 'incoming', id)).mode & 0o777, 0o200);
    const list = await p.cli(['queue', 'list', '--json']);
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(JSON.parse(list.stdout), []);
    const show = await p.cli(['queue', 'show', ready[0]!]);
    assert.notEqual(show.code, 0, 'a reserved file is not a message');
    // Ten scans of incoming/ later they are still there, untouched, and nothing went to corrupt/.
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(readdirSync(join(p.spool, 'corrupt')), []);
    }
    for (const id of ready) assert.ok(existsSync(join(p.spool, 'incoming', id)), `${id} still reserved`);
    // The next message takes the oldest ready one as its queue ID and is committed (readable) in it.
    const c = await openSession(p.port);
    let id: string;
    try {
      await c.ok('MAIL FROM:<a@example.com>', 250);
      await c.ok('RCPT TO:<user@mx.test>', 250);
      await c.ok('DATA', 354);
      c.write('Subject: reserved\r\n\r\nbody\r\n.\r\n');
      id = queueIdOf(await c.expect(250, '2.0.0'));
    } finally {
      c.close();
    }
    assert.ok(ready.includes(id), `${id} was one of the reserved files`);
    const q = await readQueued(p.spool, id);
    assert.ok(splitReceived(q.message).rest.toString('latin1').endsWith('body\r\n'));
    assert.deepEqual(readdirSync(join(p.spool, 'corrupt')), []);
  });

  test('a clean stop removes the ready ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'palisade-test-'));
    try {
      const q = await startPalisade({ workers: 1, dir });
      await waitFor('reserved files', () => (readdirSync(join(q.spool, 'incoming')).length > 0 ? true : undefined));
      assert.equal(await q.stop(), 0);
      assert.deepEqual(readdirSync(join(q.spool, 'incoming')), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
