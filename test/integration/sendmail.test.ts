// SPDX-License-Identifier: MIT
// sendmail(1) compatibility: a message on stdin is queued (exit 0) with recipients from the arguments or,
// with -t, from To/Cc/Bcc (Bcc removed); exit 75 when Palisade is not running, 64 on bad usage.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { configText, runCli, startPalisade, type Running } from '../support/palisade.ts';
import { KEEP_QUEUED, queuedIds, readQueued } from '../support/queue.ts';

describe('sendmail with Palisade running', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  /** Runs sendmail with `args` and `input`; returns its result and the IDs it added to the queue. */
  async function sendmail(args: string[], input: string): Promise<{ code: number | null; stderr: string; added: string[] }> {
    const before = new Set(queuedIds(p.spool));
    const r = await p.cli(['sendmail', ...args], input);
    return { code: r.code, stderr: r.stderr, added: queuedIds(p.spool).filter((id) => !before.has(id)) };
  }

  test('-t -i queues the message for the To, Cc and Bcc recipients and removes the Bcc field', async () => {
    const msg = 'From: Sender <sender@example.com>\nTo: Alice <alice@mx.test>, bob@mx.test\nCc: carol@remote.test\n' +
      'Bcc: hidden@remote.test\nSubject: via sendmail\n\nline one\n.\nline after a lone dot\n';
    const r = await sendmail(['-t', '-i'], msg);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.added.length, 1);
    const q = await readQueued(p.spool, r.added[0]!);
    assert.deepEqual(q.envelope.recipients.map((x) => x.address).sort(), ['alice@mx.test', 'bob@mx.test', 'carol@remote.test', 'hidden@remote.test']);
    const text = q.message.toString('utf8');
    assert.doesNotMatch(text, /^Bcc:/im);
    assert.doesNotMatch(text, /hidden@remote\.test/);
    assert.match(text, /^To: Alice <alice@mx\.test>, bob@mx\.test\r\n/m);
    assert.match(text, /^Cc: carol@remote\.test\r\n/m);
    // -i: a lone "." is a line of the message, not its end; lines end with CRLF in the queue.
    assert.ok(text.endsWith('\r\n\r\nline one\r\n.\r\nline after a lone dot\r\n'), JSON.stringify(text.slice(-60)));
    assert.equal(q.envelope.sender, `${userInfo().username}@mx.test`);
  });

  test('recipients on the command line and -f set the envelope; missing Date and Message-ID are added', async () => {
    const r = await sendmail(['-f', 'bounces@example.com', 'dave@mx.test', 'erin'], 'Subject: args\n\nbody\n');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.added.length, 1);
    const q = await readQueued(p.spool, r.added[0]!);
    assert.equal(q.envelope.sender, 'bounces@example.com');
    assert.deepEqual(q.envelope.recipients.map((x) => x.address), ['dave@mx.test', 'erin@mx.test']);
    const text = q.message.toString('utf8');
    assert.match(text, /^Date: /m);
    assert.match(text, /^Message-ID: <[^>]+@mx\.test>\r\n/m);
    assert.match(text, /^From: .*bounces@example\.com/m);
  });

  test('a message without header fields (echo text | sendmail user) keeps its text as the body', async () => {
    const r = await sendmail(['frank@mx.test'], 'hello world\nsecond: line\n');
    assert.equal(r.code, 0, r.stderr);
    const q = await readQueued(p.spool, r.added[0]!);
    const text = q.message.toString('utf8');
    assert.ok(text.endsWith('\r\n\r\nhello world\r\nsecond: line\r\n'), JSON.stringify(text));
    assert.match(text, /^From: /m);
  });

  test('the header section ends at the first line that is not a header field', async () => {
    const r = await sendmail(['frank@mx.test'], 'Subject: partly\nnot a field\nX-Late: 1\n');
    assert.equal(r.code, 0, r.stderr);
    const text = (await readQueued(p.spool, r.added[0]!)).message.toString('utf8');
    assert.match(text, /^Subject: partly\r\n/m);
    assert.ok(text.endsWith('\r\n\r\nnot a field\r\nX-Late: 1\r\n'), JSON.stringify(text));
  });

  test('without -i a line with only "." ends the message; -oi and combined flags (-it) keep it', async () => {
    const plain = await sendmail(['grace@mx.test'], 'Subject: dots\n\nbefore\n.\nafter the dot\n');
    assert.equal(plain.code, 0, plain.stderr);
    assert.ok((await readQueued(p.spool, plain.added[0]!)).message.toString('utf8').endsWith('\r\n\r\nbefore\r\n'), 'the dot line ended the input');
    for (const args of [['-oi', 'grace@mx.test'], ['-it']]) {
      const r = await sendmail(args, 'To: grace@mx.test\nSubject: dots\n\nbefore\n.\nafter the dot\n');
      assert.equal(r.code, 0, r.stderr);
      const q = await readQueued(p.spool, r.added[0]!);
      assert.deepEqual(q.envelope.recipients.map((x) => x.address), ['grace@mx.test'], `${args.join(' ')}`);
      assert.ok(q.message.toString('utf8').endsWith('\r\nbefore\r\n.\r\nafter the dot\r\n'), `${args.join(' ')} keeps the dot line`);
    }
  });

  test('-bs speaks SMTP on stdin and stdout: every reply, including those owed when the input ends, and the message is queued', async () => {
    const before = new Set(queuedIds(p.spool));
    const session = 'EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<heidi@mx.test>\r\nDATA\r\nSubject: bs\r\n\r\nvia -bs\r\n.\r\nQUIT\r\n';
    const r = await p.cli(['sendmail', '-bs'], session);
    assert.equal(r.code, 0, r.stderr);
    const codes = r.stdout.split('\r\n').filter((l) => /^\d{3} /.test(l)).map((l) => l.slice(0, 3));
    assert.deepEqual(codes, ['220', '250', '250', '250', '354', '250', '221']);
    const added = queuedIds(p.spool).filter((id) => !before.has(id));
    assert.equal(added.length, 1);
    assert.match(r.stdout, new RegExp(`250 2\\.0\\.0 Ok: queued as ${added[0]}`));
    assert.ok((await readQueued(p.spool, added[0]!)).message.toString('utf8').endsWith('\r\n\r\nvia -bs\r\n'));
    // Input that ends without QUIT still gets the 250 for its message.
    const noQuit = await p.cli(['sendmail', '-bs'], session.replace('QUIT\r\n', ''));
    assert.match(noQuit.stdout, /250 2\.0\.0 Ok: queued as/);
  });

  test('-bp lists the queue as mailq does', async () => {
    const r = await p.cli(['sendmail', '-bp']);
    assert.equal(r.code, 0, r.stderr);
    const mailq = await p.cli(['mailq']);
    assert.equal(r.stdout, mailq.stdout);
    assert.ok(queuedIds(p.spool).some((id) => r.stdout.includes(id)), r.stdout);
  });

  test('no recipients (no arguments, no -t) exits 64 and queues nothing', async () => {
    const r = await sendmail([], 'Subject: nobody\n\nbody\n');
    assert.equal(r.code, 64, r.stderr);
    assert.deepEqual(r.added, []);
  });

  test('an unknown option exits 64 and queues nothing', async () => {
    const r = await sendmail(['-Q', 'x@mx.test'], 'Subject: x\n\nbody\n');
    assert.equal(r.code, 64, r.stderr);
    assert.deepEqual(r.added, []);
  });

  test('a bad recipient address exits 65 and queues nothing', async () => {
    const r = await sendmail(['not an address@'], 'Subject: x\n\nbody\n');
    assert.equal(r.code, 65, r.stderr);
    assert.deepEqual(r.added, []);
  });
});

test('sendmail exits 75 when Palisade is not running, and nothing is queued', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-sendmail-'));
  try {
    const config = join(dir, 'palisade.toml');
    writeFileSync(config, configText(dir));
    const r = await runCli(['sendmail', '-t', '-i'], config, dir, 'To: alice@mx.test\nSubject: x\n\nbody\n');
    assert.equal(r.code, 75, r.stderr);
    assert.match(r.stderr, /not running/i);
    assert.deepEqual(queuedIds(join(dir, 'var', 'spool')), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
