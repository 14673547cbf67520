// SPDX-License-Identifier: MIT
// Bounds on untrusted input: message size (declared and actual), recipients, errors, command line length,
// idle time, and concurrent sessions (global and per client address). Each ends in its RFC reply, never a crash.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { SmtpClient, openSession, queueIdOf, summary } from '../support/smtp-client.ts';
import { KEEP_QUEUED, queuedIds, readQueued, splitReceived, spoolFiles } from '../support/queue.ts';

describe('message size, recipients, errors and line length', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, smtp: 'max_message_size = 2048\nmax_header_size = 1024\nmax_recipients = 3\nmax_errors = 5', toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('MAIL with SIZE over max_message_size gets 552 5.3.4; SIZE at the maximum is accepted', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com> SIZE=2049', 552, '5.3.4');
      await c.ok('MAIL FROM:<a@example.com> SIZE=99999999999999', 552, '5.3.4');
      await c.ok('MAIL FROM:<a@example.com> SIZE=2048', 250, '2.1.0');
    } finally {
      c.close();
    }
  });

  test('a message over max_message_size without SIZE gets 552 5.3.4 after its data, and the next message is accepted', async () => {
    const c = await openSession(p.port);
    try {
      const before = queuedIds(p.spool);
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      const line = 'y'.repeat(98) + '\r\n';
      // 3000 bytes of body, sent in several writes: the refusal must come once, after the final dot.
      c.write('Subject: big\r\n\r\n');
      for (let i = 0; i < 30; i++) c.write(line);
      c.write('.\r\n');
      await c.expect(552, '5.3.4');
      assert.deepEqual(queuedIds(p.spool), before);
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Subject: small\r\n\r\nfits\r\n.\r\n');
      const r = await c.expect(250, '2.0.0');
      assert.equal(splitReceived((await readQueued(p.spool, queueIdOf(r))).message).rest.toString(), 'Subject: small\r\n\r\nfits\r\n');
    } finally {
      c.close();
    }
  });

  test('a message of exactly max_message_size is accepted', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com> SIZE=2048');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      const head = 'Subject: exact\r\n\r\n';
      const body = head + 'z'.repeat(2048 - head.length - 2) + '\r\n';
      c.write(body + '.\r\n');
      const r = await c.expect(250, '2.0.0');
      assert.equal(splitReceived((await readQueued(p.spool, queueIdOf(r))).message).rest.length, 2048);
    } finally {
      c.close();
    }
  });

  test('a header section over max_header_size gets 552 5.3.4 once, after the data, and nothing is queued', async () => {
    const c = await openSession(p.port);
    try {
      const before = queuedIds(p.spool);
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write(`X-Long: ${'h'.repeat(1100)}\r\n\r\nbody\r\n.\r\nNOOP\r\n`);
      await c.expect(552, '5.3.4');
      await c.expect(250, '2.0.0'); // the NOOP: the rest of the data was not read as commands
      assert.deepEqual(queuedIds(p.spool), before);
    } finally {
      c.close();
    }
  });

  test('the recipient after max_recipients gets 452 4.5.3 and the message goes to the first ones', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      for (const u of ['r1', 'r2', 'r3']) await c.ok(`RCPT TO:<${u}@mx.test>`, 250, '2.1.5');
      await c.ok('RCPT TO:<r4@mx.test>', 452, '4.5.3');
      await c.ok('RCPT TO:<r5@mx.test>', 452, '4.5.3');
      await c.ok('DATA', 354);
      c.write('Subject: many\r\n\r\nx\r\n.\r\n');
      const r = await c.expect(250, '2.0.0');
      assert.deepEqual((await readQueued(p.spool, queueIdOf(r))).envelope.recipients.map((x) => x.address), ['r1@mx.test', 'r2@mx.test', 'r3@mx.test']);
    } finally {
      c.close();
    }
  });

  test('after max_errors error replies the server answers 421 and closes', async () => {
    const c = await openSession(p.port);
    try {
      for (let i = 0; i < 4; i++) await c.ok('BOGUS', 500, '5.5.1');
      c.write('BOGUS\r\nNOOP\r\n');
      const rest = await c.readUntilClosed();
      assert.deepEqual(rest.map(summary), ['500 5.5.1', '421 4.7.0']);
    } finally {
      c.close();
    }
  });

  test('a message with more than 50 Received: fields is refused as a loop with 554 5.4.6', async () => {
    const c = await openSession(p.port);
    try {
      const before = queuedIds(p.spool);
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Received: x\r\n'.repeat(51) + '\r\nbody\r\n.\r\n');
      await c.expect(554, '5.4.6');
      assert.deepEqual(queuedIds(p.spool), before);
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Received: x\r\n'.repeat(50) + '\r\nbody\r\n.\r\n');
      await c.expect(250, '2.0.0'); // exactly max_received_headers (50) is still fine
    } finally {
      c.close();
    }
  });

  test('a command line over 2048 bytes gets one 500 5.5.2 and the session goes on', async () => {
    const c = await openSession(p.port);
    try {
      c.write(`NOOP ${'a'.repeat(5000)}\r\nNOOP\r\n`);
      await c.expect(500, '5.5.2');
      await c.expect(250, '2.0.0');
      await c.ok('MAIL FROM:<a@example.com>', 250, '2.1.0');
    } finally {
      c.close();
    }
  });

  test('an overlong command line arriving in pieces gets exactly one 500 5.5.2', async () => {
    const c = await openSession(p.port);
    try {
      // The line's tail looks like a command: it must be discarded with the rest, not executed.
      c.write(`MAIL FROM:<a@example.com> ${'b'.repeat(3000)}`);
      await new Promise((r) => setTimeout(r, 50));
      c.write('c'.repeat(3000));
      await new Promise((r) => setTimeout(r, 50));
      c.write(' RSET\r\nNOOP\r\nQUIT\r\n');
      const all = await c.readUntilClosed();
      assert.deepEqual(all.map(summary), ['500 5.5.2', '250 2.0.0', '221 2.0.0']);
    } finally {
      c.close();
    }
  });

  test('a command line of exactly 2048 bytes is still a command', async () => {
    const c = await openSession(p.port);
    try {
      const line = 'NOOP ' + 'x'.repeat(2048 - 5);
      assert.equal(line.length, 2048);
      await c.ok(line, 250, '2.0.0');
    } finally {
      c.close();
    }
  });
});

describe('timeout = "1s"', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, smtp: 'timeout = "1s"', toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('an idle client gets 421 4.4.2 and the connection is closed', async () => {
    const c = await openSession(p.port);
    try {
      const t0 = Date.now();
      const all = await c.readUntilClosed(5000);
      assert.deepEqual(all.map(summary), ['421 4.4.2']);
      assert.ok(Date.now() - t0 >= 800, 'not before the timeout');
    } finally {
      c.close();
    }
  });

  test('a client that stalls inside DATA gets 421 4.4.2 and nothing is queued', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Subject: stalled\r\n\r\npart');
      const all = await c.readUntilClosed(5000);
      assert.deepEqual(all.map(summary), ['421 4.4.2']);
      await waitFor('tmp/ to be empty', () => (spoolFiles(p.spool, 'tmp').length === 0 ? true : undefined), 3000);
      assert.deepEqual(queuedIds(p.spool), []);
    } finally {
      c.close();
    }
  });

  test('a client that keeps talking is not timed out', async () => {
    const c = await openSession(p.port);
    try {
      // 1.5 s in all, more than the timeout: each command starts it again.
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 500));
        await c.ok('NOOP', 250);
      }
    } finally {
      c.close();
    }
  });
});

/** Opens a connection and returns it with its first reply (greeting or refusal). */
async function connectAndGreet(port: number): Promise<{ c: SmtpClient; first: string }> {
  const c = await SmtpClient.connect(port);
  const r = await c.read();
  return { c, first: r === null ? 'closed' : summary(r) };
}

describe('max_sessions = 3 and max_sessions_per_ip = 1 with loopback trusted (the default)', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ smtp: 'max_sessions = 3\nmax_sessions_per_ip = 1' });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('trusted clients are exempt from the per-address limit but not from max_sessions: the extra one gets 421 4.7.0, and a slot frees when a session ends', async () => {
    const open: SmtpClient[] = [];
    try {
      // Two smtpd workers share the listener: the count must be global (the anvil in master), not per worker.
      for (let i = 0; i < 3; i++) {
        const { c, first } = await connectAndGreet(p.port);
        open.push(c);
        assert.equal(first, '220');
      }
      const extra = await SmtpClient.connect(p.port);
      open.push(extra);
      const refusal = await extra.expect(421, '4.7.0');
      assert.doesNotMatch(refusal.text, /your address/i, 'the global limit, not the per-address one');
      await extra.waitClosed();
      await open[0]!.ok('QUIT', 221);
      await open[0]!.waitClosed();
      // The anvil hears of the end asynchronously: retry briefly until the slot is free.
      const again = await waitFor('a free session slot', async () => {
        const a = await connectAndGreet(p.port);
        open.push(a.c);
        if (a.first === '220') return a.c;
        a.c.close();
        return undefined;
      }, 5000);
      await again.ok('EHLO client.test');
    } finally {
      for (const c of open) c.close();
    }
  });
});

describe('max_sessions_per_ip = 1 with no trusted networks', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ smtp: 'max_sessions_per_ip = 1', toml: '[relay]\ntrusted_networks = []\n[local]\nrecipients = []\n' });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('a second session from the same address gets 421 4.7.0 while the first keeps working', async () => {
    const first = await openSession(p.port);
    let second: SmtpClient | null = null;
    try {
      second = await SmtpClient.connect(p.port);
      const refusal = await second.expect(421, '4.7.0');
      assert.match(refusal.text, /your address/i, 'the per-address limit');
      await second.waitClosed();
      // The first session is unaffected (and, untrusted, can still mail a local user).
      await first.ok('MAIL FROM:<a@example.com>', 250);
      await first.ok('RCPT TO:<user@mx.test>', 250, '2.1.5');
    } finally {
      first.close();
      second?.close();
    }
  });
});

describe('a client that keeps its side open after the server\'s closing reply', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, smtp: 'timeout = "1s"\nmax_sessions = 1' });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('is cut at the next timeout, and its session slot goes to the next client', async () => {
    // allowHalfOpen: this client does not close when the server does (as a careless or hostile one).
    const lingering = connect({ port: p.port, host: '127.0.0.1', allowHalfOpen: true });
    let got = '';
    lingering.on('data', (c: Buffer) => (got += c.toString('latin1')));
    lingering.on('error', () => {});
    try {
      await waitFor('the idle timeout\'s 421', () => (got.includes('421 4.4.2') ? true : undefined), 5000);
      // Its slot is held until the server cuts the connection; then a new client gets a greeting.
      const first = await waitFor('a greeting for the next client', async () => {
        const { c, first } = await connectAndGreet(p.port);
        c.close();
        return first.startsWith('220') ? first : undefined;
      }, 8000);
      assert.match(first, /^220/);
    } finally {
      lingering.destroy();
    }
  });
});
