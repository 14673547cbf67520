// SPDX-License-Identifier: MIT
// CHUNKING (RFC 3030): BDAT chunks are taken byte for byte (no dot-stuffing), always consumed even when
// refused (so chunk bytes are never read as commands), and never mixed with DATA.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf, summary } from '../support/smtp-client.ts';
import { KEEP_QUEUED, queuedIds, readQueued, splitReceived } from '../support/queue.ts';

/** A BDAT command with its chunk; the size is counted, never typed. */
function bdat(chunk: string, last = false): string {
  return `BDAT ${Buffer.byteLength(chunk, 'latin1')}${last ? ' LAST' : ''}\r\n${chunk}`;
}

describe('BDAT', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, smtp: 'max_message_size = 4096', toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('chunks then LAST get 250 per chunk and 250 2.0.0 queued; the stored message is byte-identical', async () => {
    const c = await openSession(p.port);
    try {
      const parts = ['Subject: chunked\r\nX-Bin: \xe9\xff\r\n\r\n', '.not stuffed\r\n..two dots\r\n', '.\r\nend\r\n'];
      await c.ok('MAIL FROM:<a@example.com> BODY=8BITMIME');
      await c.ok('RCPT TO:<user@mx.test>');
      for (const part of parts.slice(0, -1)) {
        const b = Buffer.from(part, 'latin1');
        c.write(Buffer.concat([Buffer.from(`BDAT ${b.length}\r\n`), b]));
        await c.expect(250);
      }
      const last = Buffer.from(parts.at(-1)!, 'latin1');
      c.write(Buffer.concat([Buffer.from(`BDAT ${last.length} LAST\r\n`), last]));
      const r = await c.expect(250, '2.0.0');
      const q = await readQueued(p.spool, queueIdOf(r));
      assert.deepEqual(splitReceived(q.message).rest, Buffer.from(parts.join(''), 'latin1'));
    } finally {
      c.close();
    }
  });

  test('BDAT 0 LAST ends a chunked message', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      c.write(bdat('Subject: z\r\n\r\nbody\r\n'));
      await c.expect(250);
      const r = await c.ok('BDAT 0 LAST', 250, '2.0.0');
      const q = await readQueued(p.spool, queueIdOf(r));
      assert.equal(splitReceived(q.message).rest.toString('latin1'), 'Subject: z\r\n\r\nbody\r\n');
    } finally {
      c.close();
    }
  });

  test('RCPT after the first chunk is refused with 503 5.5.1: the message goes to exactly the recipients it had', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      c.write(bdat('Subject: late\r\n'));
      await c.expect(250);
      await c.ok('RCPT TO:<postmaster@mx.test>', 503, '5.5.1');
      c.write(bdat('\r\nbody\r\n', true));
      const r = await c.expect(250, '2.0.0');
      const q = await readQueued(p.spool, queueIdOf(r));
      assert.deepEqual(q.envelope.recipients.map((x) => x.address), ['user@mx.test']);
      // After the transaction a new one takes recipients again.
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<postmaster@mx.test>', 250, '2.1.5');
    } finally {
      c.close();
    }
  });

  test('chunks pipelined with their BDAT commands in one write are each answered in order', async () => {
    const c = await openSession(p.port);
    try {
      c.write('MAIL FROM:<a@example.com>\r\nRCPT TO:<user@mx.test>\r\n' + bdat('Subject: p\r\n') + bdat('\r\nbody\r\n', true) + 'QUIT\r\n');
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), ['250 2.1.0', '250 2.1.5', '250 2.0.0', '250 2.0.0', '221 2.0.0']);
      const q = await readQueued(p.spool, queueIdOf(all[3]!));
      assert.equal(splitReceived(q.message).rest.toString('latin1'), 'Subject: p\r\n\r\nbody\r\n');
    } finally {
      c.close();
    }
  });

  test('BDAT without MAIL consumes the chunk bytes, answers 503 5.5.1 once, and the session stays usable', async () => {
    const c = await openSession(p.port);
    try {
      // The chunk looks like commands: none of it may be executed.
      const chunk = 'MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@mx.test>\r\n';
      c.write(bdat(chunk, true));
      await c.expect(503, '5.5.1');
      await c.ok('NOOP', 250, '2.0.0');
      await c.ok('RCPT TO:<v@mx.test>', 503, '5.5.1'); // no MAIL was smuggled in
      await c.ok('MAIL FROM:<a@example.com>', 250, '2.1.0');
      await c.ok('RCPT TO:<user@mx.test>', 250, '2.1.5');
      c.write(bdat('Subject: ok\r\n\r\nbody\r\n', true));
      await c.expect(250, '2.0.0');
    } finally {
      c.close();
    }
  });

  test('BDAT after MAIL without any recipient consumes the chunk and is refused', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      c.write(bdat('NOOP\r\n') + 'NOOP\r\n');
      const r = await c.read();
      assert.ok(r !== null && r.code >= 500, `expected a refusal, got ${r?.lines.join(' | ')}`);
      await c.expect(250, '2.0.0'); // the NOOP after the 6-byte chunk
    } finally {
      c.close();
    }
  });

  test('DATA after a BDAT chunk gets 503 5.5.1', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      c.write(bdat('hello'));
      await c.expect(250);
      await c.ok('DATA', 503, '5.5.1');
      c.write(bdat('\r\n', true));
      const r = await c.expect(250, '2.0.0');
      const q = await readQueued(p.spool, queueIdOf(r));
      assert.equal(splitReceived(q.message).rest.toString('latin1'), 'hello\r\n');
    } finally {
      c.close();
    }
  });

  test('RSET after a BDAT chunk discards it: the next transaction carries only its own envelope and bytes', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<first@example.com>');
      await c.ok('RCPT TO:<first@mx.test>');
      c.write(bdat('X-First: 1\r\n'));
      await c.expect(250);
      await c.ok('RSET', 250, '2.0.0');
      await c.ok('MAIL FROM:<second@example.com>');
      await c.ok('RCPT TO:<second@mx.test>');
      c.write(bdat('Subject: s\r\n\r\nbody\r\n', true));
      const r = await c.expect(250, '2.0.0');
      const q = await readQueued(p.spool, queueIdOf(r));
      assert.equal(q.envelope.sender, 'second@example.com');
      assert.deepEqual(q.envelope.recipients.map((x) => x.address), ['second@mx.test']);
      assert.equal(splitReceived(q.message).rest.toString('latin1'), 'Subject: s\r\n\r\nbody\r\n');
    } finally {
      c.close();
    }
  });

  test('EHLO after a BDAT chunk discards it as well', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<first@example.com>');
      await c.ok('RCPT TO:<first@mx.test>');
      c.write(bdat('X-First: 1\r\n'));
      await c.expect(250);
      await c.ok('EHLO client.test');
      await c.ok('MAIL FROM:<second@example.com>');
      await c.ok('RCPT TO:<second@mx.test>');
      c.write(bdat('X-Second: 2\r\n', true));
      const r = await c.expect(250, '2.0.0');
      const q = await readQueued(p.spool, queueIdOf(r));
      assert.equal(q.envelope.sender, 'second@example.com');
      assert.equal(splitReceived(q.message).rest.toString('latin1'), 'X-Second: 2\r\n');
    } finally {
      c.close();
    }
  });

  for (const bad of ['BDAT', 'BDAT abc', 'BDAT -1', 'BDAT 5 NOTLAST', 'BDAT 1234567890123456']) {
    test(`"${bad}" gets 501 5.5.4 and the connection is closed`, async () => {
      const c = await openSession(p.port);
      try {
        await c.ok('MAIL FROM:<a@example.com>');
        await c.ok('RCPT TO:<user@mx.test>');
        c.write(`${bad}\r\nNOOP\r\n`);
        const all = await c.readUntilClosed();
        assert.deepEqual(all.map(summary), ['501 5.5.4']);
      } finally {
        c.close();
      }
    });
  }

  test('a chunked message over max_message_size gets 552 5.3.4 at LAST and nothing is queued', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      const before = queuedIds(p.spool);
      const big = 'x'.repeat(3000) + '\r\n';
      c.write(bdat(big));
      await c.expect(250);
      c.write(bdat(big, true));
      await c.expect(552, '5.3.4');
      assert.deepEqual(queuedIds(p.spool), before);
      // The transaction is over; a new one works.
      await c.ok('MAIL FROM:<a@example.com>', 250);
    } finally {
      c.close();
    }
  });

  test('bare LF in BDAT content is refused with 550 5.5.2 at LAST', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      c.write(bdat('Subject: x\n\r\n\r\n', true));
      await c.expect(550, '5.5.2');
      await c.ok('NOOP', 250);
    } finally {
      c.close();
    }
  });
});
