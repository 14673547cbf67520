// SPDX-License-Identifier: MIT
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { crlfEnd, crlfToLf } from './message.ts';
import { split } from '../../test/support/split.ts';

function convert(chunks: readonly string[]): string {
  const state = { cr: false };
  const out = chunks.map((c) => crlfToLf(Buffer.from(c, 'latin1'), state));
  out.push(crlfEnd(state));
  return Buffer.concat(out).toString('latin1');
}

test('crlfToLf: CRLF becomes LF, lone CR and LF stay', () => {
  assert.equal(convert(['Subject: a\r\n\r\nline\r\n']), 'Subject: a\n\nline\n');
  assert.equal(convert(['a\rb\nc\r\n']), 'a\rb\nc\n');
  assert.equal(convert(['no line end']), 'no line end');
});

test('crlfToLf: a CRLF split between chunks', () => {
  assert.equal(convert(['one\r', '\ntwo\r', '', '\n']), 'one\ntwo\n');
  assert.equal(convert(['one\r', 'x']), 'one\rx');
  assert.equal(convert(['end\r']), 'end\r', 'a CR at the very end is released by crlfEnd');
  assert.equal(convert(['\r', '\r', '\n']), '\r\n');
});

test('crlfToLf: any text in any chunking equals the whole text with CRLF replaced', () => {
  fc.assert(
    fc.property(fc.array(fc.constantFrom('\r', '\n', '\r\n', 'a', '.', ' xyz'), { maxLength: 60 }), fc.array(fc.nat(), { maxLength: 8 }), (parts, cuts) => {
      const text = parts.join('');
      const chunks = split(Buffer.from(text, 'latin1'), cuts.map((c) => c % (text.length + 1))).map((b) => b.toString('latin1'));
      assert.equal(convert(chunks), text.replaceAll('\r\n', '\n'));
    }),
    { numRuns: 2000 },
  );
});
