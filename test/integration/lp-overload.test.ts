// SPDX-License-Identifier: MIT
// Graceful degradation under overload: past max_sessions every client gets a 421 4.7.0 (never a hang or a
// reset), stress mode switches on and off with its log lines and tightens sessions, per-IP connection and
// message rates answer 421 4.7.0 and 450 4.7.1, a slow-loris client is cut at the timeout, and master's memory
// stays bounded through it all.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:net';
import { startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { SmtpClient, openSession, summary, type WireReply } from '../support/smtp-client.ts';
import { KEEP_QUEUED } from '../support/queue.ts';
import { encodeJson, FrameDecoder } from '../../src/ipc/index.ts';

// Per-IP limits apply only outside trusted_networks, and the harness's clients come from loopback.
const UNTRUSTED = '[relay]\ntrusted_networks = []\n';
// Generous on purpose: master holds no mail, so its memory must not grow with refused clients (it is ~60 MB).
const RSS_BOUND_MB = 200;

/** Master's resident set size in MB, from /proc/<pid>/status. */
function rssMb(pid: number): number {
  const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  assert.ok(kb > 0, 'VmRSS readable');
  return Math.round(kb / 102.4) / 10;
}

/** Connects and reads the first reply; `null` means the server closed (or reset) without a reply. */
async function greet(port: number): Promise<{ c: SmtpClient; first: WireReply | null }> {
  const c = await SmtpClient.connect(port);
  return { c, first: await c.read(10_000) };
}

/** Opens `n` clients at once; asserts each got 220 or 421 4.7.0 (a 421 followed by the server closing). */
async function burst(port: number, n: number): Promise<{ admitted: SmtpClient[]; refused: number }> {
  const all = await Promise.all(Array.from({ length: n }, () => greet(port)));
  const admitted: SmtpClient[] = [];
  let refused = 0;
  for (const { c, first } of all) {
    assert.ok(first !== null, 'every client gets a reply before the connection ends');
    if (first.code === 220) {
      admitted.push(c);
      continue;
    }
    assert.equal(summary(first), '421 4.7.0', first.lines.join(' | '));
    assert.deepEqual(await c.readUntilClosed(5000), [], 'nothing after the 421, then the server closes');
    refused++;
  }
  return { admitted, refused };
}

/** The session and leased-slot counts master keeps, from its control socket's status answer. */
async function masterCounts(spool: string): Promise<{ sessions: number; leased: number }> {
  const sock = connect(join(spool, 'private', 'control'));
  const dec = new FrameDecoder();
  const answer = new Promise<{ sessions: number; leased: number }>((resolve, reject) => {
    sock.on('data', (chunk) => {
      for (const f of dec.push(chunk)) if (f.kind === 'json') resolve(JSON.parse(f.payload.toString('utf8')) as { sessions: number; leased: number });
    });
    sock.on('error', reject);
  });
  sock.write(encodeJson({ cmd: 'status' }));
  try {
    const { sessions, leased } = await answer;
    return { sessions, leased };
  } finally {
    sock.destroy();
  }
}

/** Sends one message on an admitted client (after its greeting) and quits. */
async function sendAndQuit(c: SmtpClient, n: number): Promise<void> {
  await c.ok('EHLO client.test');
  await c.ok('MAIL FROM:<a@example.com>');
  await c.ok('RCPT TO:<user@mx.test>');
  await c.ok('DATA', 354);
  c.write(`Subject: overload ${n}\r\n\r\nadmitted\r\n.\r\n`);
  await c.expect(250, '2.0.0');
  await c.ok('QUIT', 221);
  await c.waitClosed();
}

describe('max_sessions = 5 under 5x the load', () => {
  let p: Running;
  let rssBefore: number;
  before(async () => {
    p = await startPalisade({ smtp: 'max_sessions = 5', toml: UNTRUSTED + KEEP_QUEUED });
    rssBefore = rssMb(p.proc.pid!);
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('25 clients at once: each gets 220 or 421 4.7.0, exactly 5 are admitted and each can send a message', async (t) => {
    const { admitted, refused } = await burst(p.port, 25);
    try {
      t.diagnostic(`admitted ${admitted.length}, refused ${refused}`);
      assert.equal(admitted.length, 5);
      assert.equal(refused, 20);
      await Promise.all(admitted.map((c, i) => sendAndQuit(c, i)));
    } finally {
      for (const c of admitted) c.close();
    }
    await p.waitLog((l) => l.event === 'reject' && l.reason === 'max_sessions', 5000); // refusals are logged with their reason
  });

  test('once the admitted clients have quit, new clients are admitted again (sessions are uncounted)', async () => {
    // Releases travel to master after the close: allow them a moment, then 5 at once must all be admitted.
    const admitted = await waitFor('5 concurrent sessions admitted again', async () => {
      const { admitted: a } = await burst(p.port, 5);
      if (a.length === 5) return a;
      for (const c of a) c.close();
      return undefined;
    }, 5000);
    try {
      await Promise.all(admitted.map((c, i) => sendAndQuit(c, 100 + i)));
    } finally {
      for (const c of admitted) c.close();
    }
  });

  test(`master's RSS stays under ${RSS_BOUND_MB} MB through 300 more refused clients (generous bound; master holds no mail)`, async (t) => {
    // Fill the limit, then hammer it in waves of 25.
    const { admitted } = await waitFor('the 5 sessions', async () => {
      const b = await burst(p.port, 5);
      if (b.admitted.length === 5) return b;
      for (const c of b.admitted) c.close();
      return undefined;
    }, 5000);
    try {
      let refused = 0;
      for (let wave = 0; wave < 12; wave++) {
        const b = await burst(p.port, 25);
        assert.equal(b.admitted.length, 0);
        refused += b.refused;
      }
      assert.equal(refused, 300);
    } finally {
      for (const c of admitted) c.close();
    }
    const rssAfter = rssMb(p.proc.pid!);
    t.diagnostic(`master RSS before ${rssBefore} MB, after ${rssAfter} MB (bound ${RSS_BOUND_MB} MB)`);
    assert.ok(rssBefore < RSS_BOUND_MB, `RSS before: ${rssBefore} MB`);
    assert.ok(rssAfter < RSS_BOUND_MB, `RSS after: ${rssAfter} MB`);
  });
});

// With max_sessions = 64 and two workers each worker is leased slots (4 at a time) to admit trusted clients without
// asking master; the limit must hold all the same, and slots used must be counted and given back.
describe('max_sessions = 64 with leased slots (two workers, trusted clients)', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 2, smtp: 'max_sessions = 64\nstress_threshold = 1.0', toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('96 clients at once: never more than 64 admitted, every other one refused with 421 4.7.0; all admitted again after they quit', async (t) => {
    const { admitted, refused } = await burst(p.port, 96);
    try {
      t.diagnostic(`admitted ${admitted.length}, refused ${refused}`);
      assert.ok(admitted.length <= 64, `${admitted.length} admitted`);
      // A leased slot can sit in the other worker for one round trip: allow a few refusals below the limit.
      assert.ok(admitted.length >= 56, `${admitted.length} admitted`);
      assert.equal(admitted.length + refused, 96);
      await Promise.all(admitted.slice(0, 3).map((c, i) => sendAndQuit(c, 200 + i)));
    } finally {
      for (const c of admitted) c.close();
    }
    // Every session ended (releases reach master just after the server sees the close): the count drops back,
    // so a full house fits again, and the limit still holds for the next crowd.
    await waitFor('64 sessions admitted at once', async () => {
      const b = await burst(p.port, 64);
      for (const c of b.admitted) c.close();
      return b.admitted.length === 64 ? true : undefined;
    }, 10_000);
    await waitFor('a second crowd of 96 admitted up to the limit', async () => {
      const b = await burst(p.port, 96);
      for (const c of b.admitted) c.close();
      assert.ok(b.admitted.length <= 64, `${b.admitted.length} admitted`);
      return b.admitted.length >= 56 ? true : undefined;
    }, 10_000);
  });
});

// A session that ends on a leased slot leaves the slot with its worker for the next client, and master hears of
// it in the next batch: sessions one after another must keep being admitted past the lease size, and the count
// must come back exact (a full house fits, one more is refused).
describe('max_sessions = 64, one worker: sessions that end keep their leased slots', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, smtp: 'max_sessions = 64\nstress_threshold = 1.0', toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('30 sessions one after another (a lease is 8 slots) are all admitted and counted out again, their slots leased to the worker again; then 64 at once fit and the 65th gets 421 4.7.0', async () => {
    for (let i = 0; i < 30; i++) {
      const { c, first } = await greet(p.port);
      assert.equal(first?.code, 220, `session ${i}`);
      await c.ok('QUIT', 221);
      await c.waitClosed();
    }
    // At rest the worker holds its whole lease again (8 = 64 / 8), and master counts exactly that.
    const counts = await waitFor('master counts no session once all have ended', async () => {
      const c = await masterCounts(p.spool);
      return c.sessions === 0 ? c : undefined;
    }, 5000);
    assert.deepEqual(counts, { sessions: 0, leased: 8 });
    await waitFor('a full house admitted and one more refused', async () => {
      const b = await burst(p.port, 65);
      for (const c of b.admitted) c.close();
      assert.ok(b.admitted.length <= 64, `${b.admitted.length} admitted`);
      return b.admitted.length === 64 && b.refused === 1 ? true : undefined;
    }, 10_000);
  });
});

describe('stress mode (max_sessions = 10, stress_threshold = 0.5)', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ smtp: 'max_sessions = 10\nstress_threshold = 0.5\nstress_timeout = "2s"\nstress_max_errors = 3', toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('5 sessions switch stress on (logged), where sessions get stress_timeout and stress_max_errors; closing them switches it off', async () => {
    const held: SmtpClient[] = [];
    try {
      for (let i = 0; i < 5; i++) held.push(await openSession(p.port));
      const on = await p.waitLog((l) => l.event === 'stress' && l.on === true, 5000);
      assert.equal(on.sessions, 5);
      // A session started in stress mode: three errors (not max_errors = 20) end it with 421 4.7.0.
      const e = await openSession(p.port);
      try {
        await e.ok('XYZZY', 500);
        await e.ok('XYZZY', 500);
        await e.ok('XYZZY', 500);
        await e.expect(421, '4.7.0');
        await e.waitClosed();
      } finally {
        e.close();
      }
      // ... and an idle one is cut after stress_timeout (2 s), not the normal 300 s.
      const started = Date.now();
      const idle = await SmtpClient.connect(p.port);
      try {
        await idle.expect(220);
        await idle.expect(421, '4.4.2');
        await idle.waitClosed();
      } finally {
        idle.close();
      }
      const waited = Date.now() - started;
      assert.ok(waited >= 1500 && waited < 6000, `cut after ${waited} ms`);
      assert.equal(p.logs().filter((l) => l.event === 'stress' && l.on === false).length, 0, 'still stressed while the sessions stay');
    } finally {
      for (const c of held) c.close();
    }
    const off = await p.waitLog((l) => l.event === 'stress' && l.on === false, 5000);
    assert.ok((off.sessions as number) < 5 * 0.75, `off below 3/4 of the threshold (at ${String(off.sessions)})`);
  });
});

describe('per-IP rates and the slow loris (timeout = "1s")', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({
      workers: 2,
      smtp: 'max_connection_rate_per_ip = 3\nmax_message_rate_per_ip = 2\ntimeout = "1s"',
      toml: UNTRUSTED + KEEP_QUEUED,
    });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('the third MAIL within a minute from one address gets 450 4.7.1, and the session goes on', async () => {
    const c = await openSession(p.port); // connection 1 of 3 from 127.0.0.1
    try {
      await c.ok('MAIL FROM:<a@example.com>', 250);
      await c.ok('RSET', 250);
      await c.ok('MAIL FROM:<a@example.com>', 250);
      await c.ok('RSET', 250);
      await c.ok('MAIL FROM:<a@example.com>', 450, '4.7.1');
      await c.ok('NOOP', 250);
    } finally {
      c.close();
    }
  });

  test('the fourth connection within a minute from one address gets 421 4.7.0; another address is still admitted', async () => {
    for (let i = 2; i <= 3; i++) {
      const c = await SmtpClient.connect(p.port);
      try {
        await c.expect(220);
        await c.ok('QUIT', 221);
      } finally {
        c.close();
      }
    }
    const fourth = await SmtpClient.connect(p.port);
    try {
      await fourth.expect(421, '4.7.0');
      await fourth.waitClosed();
    } finally {
      fourth.close();
    }
    await p.waitLog((l) => l.event === 'reject' && l.reason === 'max_connection_rate_per_ip', 5000);
    // The rate is per address: 127.0.0.2 (still loopback) has its own count.
    const other = await rawGreeting(p.port, '127.0.0.2');
    assert.match(other, /^220 /);
  });

  test('a slow loris (one byte, then silence) gets 421 4.4.2 after the 1 s timeout and is disconnected', async () => {
    // From 127.0.0.3: 127.0.0.1 has used up its connection rate.
    const sock = connect({ port: p.port, host: '127.0.0.1', localAddress: '127.0.0.3' });
    let text = '';
    sock.on('data', (c: Buffer) => (text += c.toString('latin1')));
    sock.on('error', () => {});
    const closed = new Promise<number>((resolve) => sock.on('close', () => resolve(Date.now())));
    try {
      await waitFor('the greeting', () => (text.includes('\r\n') ? true : undefined), 5000);
      assert.match(text, /^220 /);
      const sent = Date.now();
      sock.write('E');
      const at = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), 6000))]);
      assert.ok(at > 0, 'the server closed the connection');
      assert.ok(at - sent >= 800 && at - sent < 4000, `closed ${at - sent} ms after the byte`);
      assert.match(text, /\r\n421 4\.4\.2 /);
    } finally {
      sock.destroy();
    }
  });
});

/** Connects from `localAddress` and returns the greeting line, then quits. */
function rawGreeting(port: number, localAddress: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect({ port, host: '127.0.0.1', localAddress });
    let text = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no greeting from ${localAddress}`));
    }, 5000);
    sock.on('error', reject);
    sock.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (text.includes('\r\n')) {
        clearTimeout(timer);
        sock.end('QUIT\r\n');
        sock.destroySoon();
        resolve(text);
      }
    });
  });
}

describe('per-IP message and recipient rates with loopback trusted (the default)', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, smtp: 'max_message_rate_per_ip = 2\nmax_recipient_rate_per_ip = 2', toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('a trusted client is exempt: five MAILs and five RCPTs in a row are all accepted', async () => {
    const c = await openSession(p.port);
    try {
      for (let i = 0; i < 5; i++) {
        await c.ok('MAIL FROM:<a@example.com>', 250);
        await c.ok(`RCPT TO:<r${i}@mx.test>`, 250);
        await c.ok('RSET', 250);
      }
    } finally {
      c.close();
    }
  });
});

describe('per-IP recipient rate', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, smtp: 'max_recipient_rate_per_ip = 3', toml: UNTRUSTED + KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  test('the fourth recipient within a minute from one address gets 450 4.7.1 and is not kept; the message goes out to the three', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>', 250);
      for (const u of ['r1', 'r2', 'r3']) await c.ok(`RCPT TO:<${u}@mx.test>`, 250);
      await c.ok('RCPT TO:<r4@mx.test>', 450, '4.7.1');
      await c.ok('DATA', 354);
      c.write('Subject: rate\r\n\r\nbody\r\n.\r\n');
      const r = await c.expect(250, '2.0.0');
      const qid = /queued as (\S+)/.exec(r.text)![1]!;
      const show = await p.cli(['queue', 'show', qid, '--json']);
      assert.equal(show.code, 0, show.stderr);
      const entry = JSON.parse(show.stdout) as { recipients: { address: string }[] };
      assert.deepEqual(entry.recipients.map((x) => x.address), ['r1@mx.test', 'r2@mx.test', 'r3@mx.test']);
    } finally {
      c.close();
    }
  });
});
