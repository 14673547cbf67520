// SPDX-License-Identifier: MIT
// Unit tests for the streaming header scanner: loop detection, section size, field count, Message-ID,
// and the same verdict for any chunking.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { HeaderScanner, rfc5322Date, type HeaderLimits } from './headers.ts';
import type { Reply } from '../core/reply.ts';

const LIMITS: HeaderLimits = { maxHeaderSize: 4096, maxHeaders: 20, maxReceived: 5 };

const b = (s: string) => Buffer.from(s, 'latin1');

// Feeds chunks until the first refusal; returns it (or null) and the scanner.
function scan(chunks: readonly Buffer[], limits: HeaderLimits = LIMITS): { verdict: Reply | null; s: HeaderScanner } {
  const s = new HeaderScanner(limits);
  for (const c of chunks) {
    const r = s.push(c);
    if (r !== null) return { verdict: r, s };
  }
  return { verdict: null, s };
}

function received(n: number): string {
  return Array.from({ length: n }, (_, i) => `Received: from h${i}.example by mx.example; Sat, 1 Jan 2026 00:00:0${i % 10} +0000\r\n`).join('');
}

function split(buf: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.max(0, Math.min(buf.length, c))))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(buf.subarray(prev, p));
    prev = p;
  }
  out.push(buf.subarray(prev));
  return out;
}

describe('HeaderScanner', () => {
  test('accepts an ordinary header section and captures the Message-ID', () => {
    const { verdict, s } = scan([b('From: a@example.com\r\nSubject: hi\r\nMessage-ID: <abc@example.com>\r\n\r\nbody\r\n')]);
    assert.equal(verdict, null);
    assert.equal(s.messageId, '<abc@example.com>');
  });

  test('captures a folded Message-ID and matches the field name in any case', () => {
    const { s } = scan([b('message-id:\r\n <folded@example.com>\r\n\r\n')]);
    assert.equal(s.messageId, '<folded@example.com>');
  });

  test('leaves messageId undefined when there is none', () => {
    assert.equal(scan([b('Subject: x\r\n\r\n')]).s.messageId, undefined);
  });

  test('accepts exactly the maximum number of Received fields', () => {
    assert.equal(scan([b(received(5) + '\r\nbody')]).verdict, null);
  });

  test('refuses one Received field over the maximum as a loop with 554 5.4.6', () => {
    const r = scan([b(received(6) + '\r\n')]).verdict;
    assert.equal(r?.code, 554);
    assert.equal(r?.enhanced, '5.4.6');
  });

  test('counts Received fields whatever the case of their name', () => {
    const text = Array.from({ length: 6 }, (_, i) => (i % 2 ? 'RECEIVED: x\r\n' : 'received : y\r\n')).join('');
    assert.equal(scan([b(text)]).verdict?.enhanced, '5.4.6');
  });

  test('does not count continuation lines or body lines as fields', () => {
    const text = 'Received: a\r\n' + ' Received: folded\r\n'.repeat(10) + '\r\n' + 'Received: in body\r\n'.repeat(10);
    assert.equal(scan([b(text)]).verdict, null);
  });

  test('refuses a header section over the size limit with 552 5.3.4', () => {
    const r = scan([b(`Subject: ${'x'.repeat(5000)}\r\n\r\n`)]).verdict;
    assert.equal(r?.code, 552);
    assert.equal(r?.enhanced, '5.3.4');
  });

  test('refuses a header line that never ends once it passes the size limit', () => {
    const s = new HeaderScanner(LIMITS);
    let r: Reply | null = null;
    for (let i = 0; i < 100 && r === null; i++) r = s.push(b('x'.repeat(100)));
    assert.equal(r?.code, 552);
  });

  test('ignores a large body once the header section has ended', () => {
    const { verdict } = scan([b('Subject: x\r\n\r\n'), b('y'.repeat(100_000))]);
    assert.equal(verdict, null);
  });

  test('refuses more header fields than allowed with 552 5.3.4', () => {
    const r = scan([b('X-A: 1\r\n'.repeat(21) + '\r\n')]).verdict;
    assert.equal(r?.code, 552);
    assert.equal(r?.enhanced, '5.3.4');
    assert.equal(scan([b('X-A: 1\r\n'.repeat(20) + '\r\n')]).verdict, null);
  });

  test('treats a bare LF blank line as the end of the header section', () => {
    assert.equal(scan([b('Subject: x\n\n' + received(10))]).verdict, null);
  });
});

describe('HeaderScanner properties', () => {
  const field = fc.oneof(
    fc.constant('Received: from x by y\r\n'),
    fc.constant('Message-ID: <id@example.com>\r\n'),
    fc.constant(' continued\r\n'),
    fc.string({ unit: fc.constantFrom('a', 'b', ':', ' ', '-'), maxLength: 60 }).map((s) => `X${s}\r\n`),
    fc.integer({ min: 100, max: 3000 }).map((n) => `X-Long: ${'z'.repeat(n)}\r\n`),
  );
  const message = fc
    .tuple(fc.array(field, { maxLength: 30 }), fc.boolean())
    .map(([fs, end]) => b(fs.join('') + (end ? '\r\nbody\r\n' : '')));

  test('gives the same verdict and Message-ID for any chunking as for one piece', () => {
    fc.assert(
      fc.property(message.chain((m) => fc.tuple(fc.constant(m), fc.array(fc.integer({ min: 0, max: m.length }), { maxLength: 15 }))), ([m, cuts]) => {
        const whole = scan([m]);
        const chunked = scan(split(m, cuts));
        assert.deepEqual(chunked.verdict, whole.verdict);
        if (whole.verdict === null) assert.equal(chunked.s.messageId, whole.s.messageId);
      }),
      { numRuns: 400 },
    );
  });

  test('refuses exactly when a limit is crossed before the blank line', () => {
    fc.assert(
      fc.property(message, (m) => {
        const text = m.toString('latin1');
        const blank = text.indexOf('\r\n\r\n');
        const headerEnd = blank < 0 ? text.length : blank + 4;
        const lines = text.slice(0, blank < 0 ? text.length : blank + 2).split('\r\n').filter((l) => l !== '');
        const fields = lines.filter((l) => l[0] !== ' ');
        const recv = fields.filter((l) => /^received\s*:/i.test(l)).length;
        const tooBig = headerEnd > LIMITS.maxHeaderSize;
        const tooMany = fields.length > LIMITS.maxHeaders || recv > LIMITS.maxReceived;
        const { verdict } = scan([m]);
        assert.equal(verdict !== null, tooBig || tooMany);
      }),
      { numRuns: 300 },
    );
  });
});

describe('rfc5322Date', () => {
  test('formats a UTC RFC 5322 date-time', () => {
    assert.equal(rfc5322Date(new Date('2026-11-28T01:23:45Z')), 'Sat, 28 Nov 2026 01:23:45 +0000');
    assert.equal(rfc5322Date(new Date('2026-01-05T00:00:09Z')), 'Mon, 5 Jan 2026 00:00:09 +0000');
  });
});
