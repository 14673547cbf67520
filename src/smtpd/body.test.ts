// SPDX-License-Identifier: MIT
// Unit tests for message bodies: DATA's end and limits, BDAT's chunk arguments and bookkeeping (a refused
// chunk refuses the rest of its transaction until LAST), with a stand-in for the cleanup transaction that
// records what would have been sent.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { R } from '../core/reply.ts';
import { BdatBody, Chunking, DataBody } from './body.ts';
import type { CleanupTransaction } from './cleanup-client.ts';

/** Records the bytes written and whether the transaction was aborted. */
function tx(): CleanupTransaction & { written(): string; aborted: boolean } {
  const parts: Buffer[] = [];
  const t = {
    aborted: false,
    failed: null,
    write: (chunks: readonly Buffer[]) => {
      parts.push(...chunks);
      return true;
    },
    abort: () => {
      t.aborted = true;
    },
    onDrain: (cb: () => void) => cb(),
    written: () => Buffer.concat(parts).toString('latin1'),
  };
  return t as unknown as CleanupTransaction & { written(): string; aborted: boolean };
}

const b = (s: string) => Buffer.from(s, 'latin1');

test('DATA: the body ends at CRLF.CRLF, dot-unstuffed; what follows is handed back for the next commands', () => {
  const t = tx();
  const body = new DataBody(t, 1000);
  const first = body.push(b('Subject: x\r\n\r\n..dot\r\n'));
  assert.equal(first.done, false);
  const end = body.push(b('last\r\n.\r\nQUIT\r\n'));
  assert.equal(end.done, true);
  assert.equal(end.rest.toString(), 'QUIT\r\n');
  assert.equal(t.written(), 'Subject: x\r\n\r\n.dot\r\nlast\r\n');
  assert.equal(body.verdict(), null);
});

test('DATA: past the size limit the transaction is aborted, read on to the end, and refused 552', () => {
  const t = tx();
  const body = new DataBody(t, 10);
  body.push(b('0123456789ABCDEF\r\n'));
  assert.equal(t.aborted, true);
  const end = body.push(b('more\r\n.\r\n'));
  assert.equal(end.done, true);
  assert.equal(body.verdict()?.reply, R.tooBig);
  assert.equal(t.written(), '', 'nothing past the limit goes to cleanup');
});

test('DATA: a bare LF or a NUL is refused at the end, and nothing more is sent', () => {
  const lf = new DataBody(tx(), 1000);
  lf.push(b('a\nb\r\n.\r\n'));
  assert.equal(lf.verdict()?.reply, R.bareLfData);
  const nul = new DataBody(tx(), 1000);
  nul.push(b('a\0b\r\n.\r\n'));
  assert.equal(nul.verdict()?.reply, R.nulInData);
});

test('BDAT arguments: a size of up to 15 digits and an optional LAST; anything else is a syntax error', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 40 }), (args) => {
      const ok = new Chunking().start(args, null, () => new BdatBody(tx(), 1000)).ok;
      assert.equal(ok, /^\d{1,15}(?: +LAST)? *$/i.test(args));
    }),
    { numRuns: 500 },
  );
  for (const args of ['5', '0 LAST', '12 last', '7 LAST  ']) assert.equal(new Chunking().start(args, null, () => new BdatBody(tx(), 1000)).ok, true, args);
  for (const args of ['', 'x', '-1', '5 LASTX', '1234567890123456', ' 5']) assert.equal(new Chunking().start(args, null, () => new BdatBody(tx(), 1000)).ok, false, args);
});

test('BDAT: chunks are taken by count (CRLF.CRLF means nothing), then LAST ends the body with the CRLF it lacked', () => {
  const t = tx();
  const c = new Chunking();
  const s1 = c.start('8', null, () => new BdatBody(t, 1000));
  assert.ok(s1.ok);
  const body = s1.body!;
  const fed = c.push(b('a\r\n.\r\nbcNOOP\r\n'), body);
  assert.equal(fed.done, true);
  assert.equal(fed.rest.toString(), 'NOOP\r\n');
  const f1 = c.finish(body);
  assert.ok(!f1.end && f1.answer.code === 250 && /8 octets/.test(f1.answer.lines[0]!));
  const s2 = c.start('0 LAST', body, () => assert.fail('the transaction has its body'));
  assert.ok(s2.ok && s2.body === body);
  assert.equal(c.push(b(''), body).done, true);
  assert.deepEqual(c.finish(body), { end: true });
  assert.equal(body.verdict(), null);
  assert.equal(t.written(), 'a\r\n.\r\nbc\r\n');
});

test('BDAT: a chunk past the size limit refuses the transaction: its later chunks get the same answer until LAST', () => {
  const t = tx();
  const c = new Chunking();
  const start = c.start('8', null, () => new BdatBody(t, 5));
  assert.ok(start.ok);
  c.push(b('12345678'), start.body);
  assert.equal(t.aborted, true);
  const f1 = c.finish(start.body);
  assert.ok(!f1.end && f1.answer === R.tooBig && f1.abandon && !f1.over);
  const again = c.start('3', null, () => assert.fail('no new body while the transaction is refused'));
  assert.ok(again.ok);
  c.push(b('abc'), null);
  const f2 = c.finish(null);
  assert.ok(!f2.end && f2.answer === R.tooBig && !f2.over);
  c.start('0 LAST', null, () => assert.fail('still refused'));
  const f3 = c.finish(null);
  assert.ok(!f3.end && f3.answer === R.tooBig && f3.over);
  assert.equal(c.failed, null, 'the next transaction starts clean');
});

test('BDAT: a body whose transaction may not take one is refused with that reply', () => {
  const c = new Chunking();
  const s = c.start('2 LAST', null, () => R.badSequence);
  assert.ok(s.ok && s.body === null);
  c.push(b('hi'), null);
  const f = c.finish(null);
  assert.ok(!f.end && f.answer === R.badSequence && f.over);
});

test('BDAT: a bare CR at the very end, a bare LF or a NUL refuses the message at LAST', () => {
  for (const [content, reply] of [['a\r', R.bareLfData], ['a\nb', R.bareLfData], ['a\0\r\n', R.nulInData]] as const) {
    const body = new BdatBody(tx(), 1000);
    body.push(b(content));
    assert.equal(body.verdict()?.reply, reply, JSON.stringify(content));
  }
});
