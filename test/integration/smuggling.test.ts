// SPDX-License-Identifier: MIT
// SMTP smuggling (CVE-2023-51764 family): only CRLF "." CRLF ends DATA; a message with a bare CR or LF is
// read to that real end and refused with exactly one 550 5.5.2, so nothing after a fake end runs as a command.
// Bare CR, bare LF and NUL in commands are refused, never repaired.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf, summary } from '../support/smtp-client.ts';
import { KEEP_QUEUED, readQueued, splitReceived, spoolFiles } from '../support/queue.ts';
import { QueueStore } from '../../src/queue/index.ts';

const SMUGGLED = 'MAIL FROM:<evil@x>\r\nRCPT TO:<v@mx.test>\r\nDATA\r\nsmuggled\r\n.\r\n';

describe('SMTP smuggling', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, toml: '[relay]\ntrusted_networks = []\n' + KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  // What "palisade queue list" shows, read the same way (in-process: no CLI start per check).
  async function queueList(): Promise<string[]> {
    return (await new QueueStore(p.spool).list()).map((e) => `${e.id} ${e.envelope.sender}`);
  }

  for (const [name, fakeEnd] of [
    ['LF . LF', '\n.\n'],
    ['CRLF . LF', '\r\n.\n'],
    ['LF . CRLF', '\n.\r\n'],
    ['CR . CRLF', '\r.\r\n'],
  ] as const) {
    test(`a fake end "${name}" followed by smuggled commands gets exactly one 550 5.5.2 and queues nothing`, async () => {
      const queuedBefore = await queueList();
      const c = await openSession(p.port);
      try {
        await c.ok('MAIL FROM:<a@example.com>');
        await c.ok('RCPT TO:<user@mx.test>');
        await c.ok('DATA', 354);
        // The smuggled block ends in a genuine CRLF.CRLF; the real "\r\n.\r\n" after it is then just stray lines.
        c.write(`Subject: innocent\r\n\r\nhello${fakeEnd}${SMUGGLED}\r\n.\r\nQUIT\r\n`);
        const all = (await c.readUntilClosed()).map(summary);
        assert.equal(all[0], '550 5.5.2', all.join(', '));
        assert.equal(all.at(-1), '221 2.0.0', all.join(', '));
        // Whatever follows the one DATA reply is a refusal of the stray lines: never 250 or 354.
        for (const r of all.slice(1, -1)) assert.match(r, /^5/, all.join(', '));
        assert.equal(all.filter((r) => r.startsWith('550')).length, 1, all.join(', '));
        assert.deepEqual(spoolFiles(p.spool, 'tmp'), []);
        assert.deepEqual(await queueList(), queuedBefore);
      } finally {
        c.close();
      }
    });
  }

  test('the session stays usable after a refused message', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Subject: x\r\n\r\nbare\nlf\r\n.\r\n');
      await c.expect(550, '5.5.2');
      await c.ok('RCPT TO:<user@mx.test>', 503, '5.5.1'); // the transaction ended with the refusal
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Subject: x\r\n\r\ngood\r\n.\r\n');
      const q = await readQueued(p.spool, queueIdOf(await c.expect(250, '2.0.0')));
      assert.equal(splitReceived(q.message).rest.toString(), 'Subject: x\r\n\r\ngood\r\n');
    } finally {
      c.close();
    }
  });

  test('a lone "." line that is dot-stuffed ("..") is content, not the end', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write(`Subject: x\r\n\r\n..\r\n${SMUGGLED.replace('\r\n.\r\n', '\r\n..\r\n')}.\r\nQUIT\r\n`);
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), ['250 2.0.0', '221 2.0.0']);
      const q = await readQueued(p.spool, queueIdOf(all[0]!));
      assert.equal(splitReceived(q.message).rest.toString(), `Subject: x\r\n\r\n.\r\n${SMUGGLED}`);
    } finally {
      c.close();
    }
  });

  test('NUL in message content gets 550 5.6.0 after the real end', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Subject: x\r\n\r\nnul\0here\r\n.\r\nQUIT\r\n');
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), ['550 5.6.0', '221 2.0.0']);
    } finally {
      c.close();
    }
  });

  test('a bare CR in a command gets one 500 5.5.2 and the line is not executed', async () => {
    const c = await openSession(p.port);
    try {
      c.write('MAIL FROM:<a@example.com>\rRCPT TO:<user@mx.test>\r\nRCPT TO:<user@mx.test>\r\nQUIT\r\n');
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), ['500 5.5.2', '503 5.5.1', '221 2.0.0']);
    } finally {
      c.close();
    }
  });

  test('a bare LF ending a command gets 500 5.5.2 and is not executed', async () => {
    const c = await openSession(p.port);
    try {
      c.write('MAIL FROM:<a@example.com>\nRCPT TO:<user@mx.test>\r\nQUIT\r\n');
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), ['500 5.5.2', '503 5.5.1', '221 2.0.0']);
    } finally {
      c.close();
    }
  });

  test('NUL in a command gets 500 and the command is not executed', async () => {
    const c = await openSession(p.port);
    try {
      c.write('MAIL FROM:<a\0@example.com>\r\nRCPT TO:<user@mx.test>\r\nQUIT\r\n');
      const all = await c.readUntilClosed();
      assert.equal(all.length, 3, all.map(summary).join(', '));
      assert.equal(all[0]!.code, 500);
      assert.deepEqual(all.slice(1).map(summary), ['503 5.5.1', '221 2.0.0']);
    } finally {
      c.close();
    }
  });
});
