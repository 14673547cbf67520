// SPDX-License-Identifier: MIT
// Unit tests for the DATA reader (end of data, dot-unstuffing, smuggling variants) and the BDAT line-end checker,
// with properties showing that any split of the wire bytes gives the same result as one piece.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DataReader, LineEndChecker } from './data.ts';
import { split } from '../../test/support/split.ts';

const MAX_CARRY = 8192; // DataReader's carry limit: longer partial lines are passed on early.

/** What a whole DATA phase produced. */
interface Outcome {
  out: Buffer;
  done: boolean;
  /** Offset in the whole input of the first byte after the end (input length when not done). */
  end: number;
  bareLineEnd: boolean;
  nul: boolean;
  size: number;
}

// Feeds `chunks` to a fresh reader until it reports the end; returns everything it produced.
function feed(chunks: readonly Buffer[]): Outcome {
  const r = new DataReader();
  const out: Buffer[] = [];
  let offset = 0;
  for (const c of chunks) {
    const res = r.push(c);
    out.push(...res.out);
    if (res.done) {
      return { out: Buffer.concat(out), done: true, end: offset + res.consumed, bareLineEnd: r.bareLineEnd, nul: r.nul, size: r.size };
    }
    assert.equal(res.consumed, c.length, 'an unfinished push consumes all its input');
    offset += c.length;
  }
  return { out: Buffer.concat(out), done: false, end: offset, bareLineEnd: r.bareLineEnd, nul: r.nul, size: r.size };
}


const wire = (s: string) => Buffer.from(s, 'latin1');

// Reference dot-stuffer (RFC 5321 §4.5.2): CRLF after each line, a leading "." doubled, then the end line.
function dotStuff(lines: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const l of lines) {
    if (l[0] === 0x2e) parts.push(wire('.'));
    parts.push(l, wire('\r\n'));
  }
  parts.push(wire('.\r\n'));
  return Buffer.concat(parts);
}

// Reference reading of raw bytes: the end is the first ".\r\n" at the start of input or right after a CRLF;
// flags and unstuffed output are computed over the bytes before it.
function reference(b: Buffer): { end: number; out: Buffer; bareLineEnd: boolean; nul: boolean } | null {
  let endLine = -1;
  for (let p = 0; p + 3 <= b.length; p++) {
    const atStart = p === 0 || (p >= 2 && b[p - 2] === 0x0d && b[p - 1] === 0x0a);
    if (atStart && b[p] === 0x2e && b[p + 1] === 0x0d && b[p + 2] === 0x0a) {
      endLine = p;
      break;
    }
  }
  if (endLine < 0) return null;
  const content = b.subarray(0, endLine);
  let bare = false;
  for (let i = 0; i < content.length; i++) {
    if (content[i] === 0x0a && (i === 0 || content[i - 1] !== 0x0d)) bare = true;
    if (content[i] === 0x0d && content[i + 1] !== 0x0a) bare = true;
  }
  const out: Buffer[] = [];
  let start = 0;
  let lineStart = true;
  while (start < content.length) {
    const lf = content.indexOf(0x0a, start);
    const stop = lf < 0 ? content.length : lf + 1;
    const line = content.subarray(start, stop);
    out.push(lineStart && line[0] === 0x2e ? line.subarray(1) : line);
    lineStart = lf > start && content[lf - 1] === 0x0d;
    start = stop;
  }
  return { end: endLine + 3, out: Buffer.concat(out), bareLineEnd: bare, nul: content.includes(0) };
}

describe('DataReader', () => {
  test('ends at CRLF.CRLF and passes the message on with its CRLF line ends', () => {
    const o = feed([wire('Subject: hi\r\n\r\nbody\r\n.\r\n')]);
    assert.equal(o.done, true);
    assert.equal(o.out.toString('latin1'), 'Subject: hi\r\n\r\nbody\r\n');
    assert.equal(o.size, o.out.length);
    assert.equal(o.bareLineEnd, false);
    assert.equal(o.nul, false);
  });

  test('treats a "." line at the very start as an empty message', () => {
    const o = feed([wire('.\r\nQUIT\r\n')]);
    assert.equal(o.done, true);
    assert.equal(o.out.length, 0);
    assert.equal(o.end, 3);
  });

  test('reports the consumed offset so the bytes after the end are the next command', () => {
    const input = wire('a\r\n.\r\nMAIL FROM:<x@y.example>\r\n');
    const o = feed([input]);
    assert.equal(input.subarray(o.end).toString('latin1'), 'MAIL FROM:<x@y.example>\r\n');
  });

  test('removes one leading dot from each stuffed line', () => {
    const o = feed([wire('..\r\n...x\r\n.y\r\nz.\r\n.\r\n')]);
    assert.equal(o.out.toString('latin1'), '.\r\n..x\r\ny\r\nz.\r\n');
  });

  test('does not end at a line that only starts with a dot', () => {
    const o = feed([wire('.. \r\n. \r\n.x\r\n')]);
    assert.equal(o.done, false);
  });

  const smuggling: [string, string][] = [
    ['<LF>.<LF>', 'a\n.\nMAIL FROM:<evil@x>\r\n'],
    ['<CR><LF>.<LF>', 'a\r\n.\nMAIL FROM:<evil@x>\r\n'],
    ['<LF>.<CR><LF>', 'a\n.\r\nMAIL FROM:<evil@x>\r\n'],
    ['<CR>.<CR><LF>', 'a\r.\r\nMAIL FROM:<evil@x>\r\n'],
    ['<CR>.<CR>', 'a\r.\rMAIL FROM:<evil@x>\r\n'],
  ];
  for (const [name, text] of smuggling) {
    test(`does not end DATA at ${name}, flags the bare line end and reads on to the real end`, () => {
      const input = wire(`${text}.\r\nNOOP\r\n`);
      const o = feed([input]);
      assert.equal(o.done, true);
      assert.equal(o.bareLineEnd, true);
      assert.equal(input.subarray(o.end).toString('latin1'), 'NOOP\r\n');
      assert.ok(o.out.toString('latin1').includes('MAIL FROM:<evil@x>'));
    });
  }

  test('flags a bare LF in the content', () => {
    assert.equal(feed([wire('a\nb\r\n.\r\n')]).bareLineEnd, true);
  });

  test('flags a bare CR in the content', () => {
    assert.equal(feed([wire('a\rb\r\n.\r\n')]).bareLineEnd, true);
    assert.equal(feed([wire('a\r\r\n.\r\n')]).bareLineEnd, true);
  });

  test('flags a NUL without removing it', () => {
    const o = feed([wire('a\0b\r\n.\r\n')]);
    assert.equal(o.nul, true);
    assert.equal(o.bareLineEnd, false);
    assert.equal(o.out.toString('latin1'), 'a\0b\r\n');
  });

  test('finds the end when it is split across pushes at every position', () => {
    const input = wire('hello\r\n.\r\nQUIT\r\n');
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= input.length; j++) {
        const o = feed(split(input, [i, j]));
        assert.equal(o.done, true, `cuts ${i},${j}`);
        assert.equal(o.end, 10, `cuts ${i},${j}`);
        assert.equal(o.out.toString('latin1'), 'hello\r\n');
      }
    }
  });

  test('keeps a CR at a chunk boundary as the first half of CRLF, not a bare CR', () => {
    const o = feed([wire('abc\r'), wire('\ndef\r'), wire('\n.\r'), wire('\n')]);
    assert.equal(o.done, true);
    assert.equal(o.bareLineEnd, false);
    assert.equal(o.out.toString('latin1'), 'abc\r\ndef\r\n');
  });

  test('passes on a line longer than the carry limit before its end arrives', () => {
    const r = new DataReader();
    const long = Buffer.alloc(MAX_CARRY + 100, 'x');
    const res = r.push(long);
    assert.equal(res.done, false);
    assert.equal(Buffer.concat(res.out).length, long.length);
  });

  test('holds back a CR that ends a long fragment until it sees whether LF follows', () => {
    const r = new DataReader();
    const long = Buffer.concat([Buffer.alloc(MAX_CARRY + 10, 'x'), wire('\r')]);
    const first = r.push(long);
    assert.equal(Buffer.concat(first.out).length, MAX_CARRY + 10);
    const second = r.push(wire('\n.\r\n'));
    assert.equal(second.done, true);
    assert.equal(Buffer.concat(second.out).toString('latin1'), '\r\n');
    assert.equal(r.bareLineEnd, false);
    assert.equal(r.size, MAX_CARRY + 12);
  });

  test('keeps a held-back CR in the output when no LF follows it, and flags it', () => {
    const long = Buffer.concat([Buffer.alloc(MAX_CARRY + 10, 'x'), wire('\r')]);
    const o = feed([long, wire('y\r\n.\r\n')]);
    assert.equal(o.bareLineEnd, true);
    assert.ok(o.out.equals(Buffer.concat([Buffer.alloc(MAX_CARRY + 10, 'x'), wire('\ry\r\n')])), 'output keeps the CR');
    assert.equal(o.size, o.out.length);
  });

  test('unstuffs a long line whose leading dot arrives in its first fragment', () => {
    const body = Buffer.alloc(MAX_CARRY * 2, 'z');
    const o = feed([wire('.'), body, wire('\r\n.\r\n')]);
    assert.equal(o.out.length, body.length + 2);
    assert.equal(o.out[0], 0x7a);
  });
});

// ---- properties ----

// A message line: no CR or LF; often starting with ".", sometimes empty, sometimes longer than the carry limit.
const shortLine = fc.oneof(
  fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a.filter((b) => b !== 0x0d && b !== 0x0a))),
  fc.constantFrom('', '.', '..', '. ', '.\t', 'x.', '.\x00').map(wire),
);
const longLine = fc
  .tuple(fc.integer({ min: MAX_CARRY - 2, max: MAX_CARRY * 2 + 5 }), fc.boolean())
  .map(([n, dot]) => {
    const b = Buffer.alloc(n, 'L');
    if (dot) b[0] = 0x2e;
    return b;
  });
const messageLines = fc.array(shortLine, { maxLength: 30 });
const messageWithLongLines = fc.array(fc.oneof({ arbitrary: shortLine, weight: 4 }, { arbitrary: longLine, weight: 1 }), { maxLength: 8 });
const trailing = fc.constantFrom('', 'QUIT\r\n', 'MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n', '.\r\n').map(wire);

// Cut points biased towards CRs so chunk boundaries often fall between CR and LF.
function cutsFor(b: Buffer): fc.Arbitrary<number[]> {
  const crs: number[] = [];
  for (let i = b.indexOf(0x0d); i >= 0 && crs.length < 200; i = b.indexOf(0x0d, i + 1)) crs.push(i + 1);
  const anywhere = fc.integer({ min: 0, max: b.length });
  const atCr = crs.length > 0 ? fc.constantFrom(...crs) : anywhere;
  return fc.array(fc.oneof(anywhere, atCr), { maxLength: 12 });
}

describe('DataReader properties', () => {
  test('round-trips any CRLF message through dot-stuffing, for any split of the wire bytes', () => {
    fc.assert(
      fc.property(
        messageLines.chain((lines) => {
          const w = dotStuff(lines);
          return fc.tuple(fc.constant(lines), trailing, cutsFor(w));
        }),
        ([lines, after, cuts]) => {
          const w = dotStuff(lines);
          const input = Buffer.concat([w, after]);
          const expected = Buffer.concat(lines.flatMap((l) => [l, wire('\r\n')]));
          const whole = feed([input]);
          const chunked = feed(split(input, cuts));
          for (const o of [whole, chunked]) {
            assert.equal(o.done, true);
            assert.ok(o.out.equals(expected), 'unstuffed output is byte-identical to the message');
            assert.equal(o.end, w.length);
            assert.equal(o.size, expected.length);
            assert.equal(o.bareLineEnd, false);
            assert.equal(o.nul, expected.includes(0));
          }
        },
      ),
      { numRuns: 400 },
    );
  });

  test('round-trips messages with lines longer than the carry limit, for any split', () => {
    fc.assert(
      fc.property(
        messageWithLongLines.chain((lines) => fc.tuple(fc.constant(lines), cutsFor(dotStuff(lines)))),
        ([lines, cuts]) => {
          const w = dotStuff(lines);
          const input = Buffer.concat([w, wire('QUIT\r\n')]);
          const expected = Buffer.concat(lines.flatMap((l) => [l, wire('\r\n')]));
          const o = feed(split(input, cuts));
          assert.equal(o.done, true);
          assert.ok(o.out.equals(expected), 'unstuffed output is byte-identical to the message');
          assert.equal(o.end, w.length);
          assert.equal(o.size, expected.length);
          assert.equal(o.bareLineEnd, false);
        },
      ),
      { numRuns: 150 },
    );
  });

  // Raw content built from pieces that stress line ends: bare CR/LF, NUL, dots, smuggling attempts, long runs.
  const RAW_PIECES = ['a', '.', '..', '\r', '\n', '\r\n', '\0', '.\r\n', '\n.\n', '\r\n.\n', '\n.\r\n', '\r.\r\n', '\r\r\n'];
  const rawContent = fc.array(
    fc.oneof(
      { arbitrary: fc.constantFrom(...RAW_PIECES).map(wire), weight: 10 },
      { arbitrary: fc.integer({ min: MAX_CARRY - 3, max: MAX_CARRY + 3 }).map((n) => Buffer.alloc(n, 'R')), weight: 1 },
    ),
    { maxLength: 25 },
  ).map((bs) => Buffer.concat([...bs, wire('\r\n.\r\nNEXT\r\n')]));

  test('ends only at CRLF.CRLF, flags exactly bare CR, bare LF and NUL, for any raw bytes and any split', () => {
    fc.assert(
      fc.property(rawContent.chain((b) => fc.tuple(fc.constant(b), cutsFor(b))), ([input, cuts]) => {
        const ref = reference(input);
        assert.ok(ref !== null);
        const whole = feed([input]);
        const chunked = feed(split(input, cuts));
        for (const o of [whole, chunked]) {
          assert.equal(o.done, true);
          assert.equal(o.end, ref.end);
          assert.equal(o.bareLineEnd, ref.bareLineEnd);
          assert.equal(o.nul, ref.nul);
          assert.ok(o.out.equals(ref.out), 'output matches the reference unstuffing');
          assert.equal(o.size, o.out.length);
        }
      }),
      { numRuns: 400 },
    );
  });
});

describe('LineEndChecker', () => {
  function check(chunks: string[]): LineEndChecker {
    const c = new LineEndChecker();
    for (const s of chunks) c.push(wire(s));
    return c;
  }

  test('accepts CRLF line ends, also when CR and LF arrive in different chunks', () => {
    const c = check(['a\r', '\nb\r\n']);
    assert.equal(c.bareLineEnd, false);
    assert.equal(c.endsMidLine, false);
  });

  test('flags a bare LF, also at the start of a chunk', () => {
    assert.equal(check(['a\nb']).bareLineEnd, true);
    assert.equal(check(['a', '\nb']).bareLineEnd, true);
  });

  test('flags a bare CR, also at the end of a chunk when the next does not start with LF', () => {
    assert.equal(check(['a\rb']).bareLineEnd, true);
    assert.equal(check(['a\r', 'b']).bareLineEnd, true);
  });

  test('reports a trailing CR as pending rather than bare', () => {
    const c = check(['a\r']);
    assert.equal(c.bareLineEnd, false);
    assert.equal(c.pendingCr, true);
    assert.equal(c.endsMidLine, true);
  });

  test('flags NUL', () => {
    assert.equal(check(['a\0\r\n']).nul, true);
  });

  test('ignores empty chunks', () => {
    const c = check(['a\r', '', '\n']);
    assert.equal(c.bareLineEnd, false);
    assert.equal(c.endsMidLine, false);
  });

  test('gives the same verdict as a whole-buffer scan for any bytes and any split', () => {
    const raw = fc.array(fc.constantFrom('a', '\r', '\n', '\r\n', '\0', '.'), { maxLength: 30 }).map((xs) => wire(xs.join('')));
    fc.assert(
      fc.property(raw.chain((b) => fc.tuple(fc.constant(b), cutsFor(b))), ([b, cuts]) => {
        let bare = false;
        for (let i = 0; i < b.length; i++) {
          if (b[i] === 0x0a && (i === 0 || b[i - 1] !== 0x0d)) bare = true;
          if (b[i] === 0x0d && i + 1 < b.length && b[i + 1] !== 0x0a) bare = true;
        }
        const c = new LineEndChecker();
        for (const part of split(b, cuts)) c.push(part);
        assert.equal(c.bareLineEnd, bare);
        assert.equal(c.nul, b.includes(0));
        assert.equal(c.pendingCr, b.length > 0 && b[b.length - 1] === 0x0d);
        assert.equal(c.endsMidLine, b.length > 0 && b[b.length - 1] !== 0x0a);
      }),
      { numRuns: 400 },
    );
  });
});
