// SPDX-License-Identifier: MIT
// Unit tests for command and ESMTP parameter parsing (RFC 5321 §4.1.1, RFC 1870, 1652, 3461, 6531).

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MAX_COMMAND_LINE, parseCommand, parseMailParams, takeLine, parseRcptParams, decodeXtext, isReply, type MailParams, type RcptParams } from './parser.ts';
import { R, type Reply } from '../core/reply.ts';

const MAX = 10_000_000;

// Asserts that `x` is a reply with this code and enhanced code.
function assertReply(x: unknown, code: number, enhanced: string): void {
  assert.ok(isReply(x), `expected a reply, got ${JSON.stringify(x)}`);
  assert.equal((x as Reply).code, code);
  assert.equal((x as Reply).enhanced, enhanced);
}

function mailOk(text: string, max = MAX): MailParams {
  const p = parseMailParams(text, max);
  assert.ok(!isReply(p), `expected parameters, got ${JSON.stringify(p)}`);
  return p;
}

function rcptOk(text: string): RcptParams {
  const p = parseRcptParams(text);
  assert.ok(!isReply(p), `expected parameters, got ${JSON.stringify(p)}`);
  return p;
}

// RFC 3461 §4 xtext encoding of a string of octets (code units 0-255).
function encodeXtext(s: string): string {
  let out = '';
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    out += c >= 33 && c <= 126 && ch !== '+' && ch !== '=' ? ch : '+' + c.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

describe('parseCommand', () => {
  test('upper-cases the verb and keeps the argument text as sent', () => {
    assert.deepEqual(parseCommand('mail FROM:<a@b.example> SIZE=10'), { verb: 'MAIL', args: 'FROM:<a@b.example> SIZE=10' });
    assert.deepEqual(parseCommand('Ehlo client.example'), { verb: 'EHLO', args: 'client.example' });
  });

  test('returns empty arguments for a bare verb', () => {
    assert.deepEqual(parseCommand('quit'), { verb: 'QUIT', args: '' });
    assert.deepEqual(parseCommand(''), { verb: '', args: '' });
  });

  test('splits at the first space only', () => {
    assert.deepEqual(parseCommand('RCPT  TO:<x@y>'), { verb: 'RCPT', args: ' TO:<x@y>' });
  });
});

describe('parseMailParams', () => {
  test('returns no parameters for empty text', () => {
    assert.deepEqual(mailOk(''), {});
  });

  test('parses SIZE, BODY, SMTPUTF8, RET and ENVID together', () => {
    assert.deepEqual(mailOk('SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159'), {
      size: 1000, body: '8BITMIME', smtputf8: true, ret: 'HDRS', envid: 'QQ314159',
    });
  });

  test('treats keywords and enumerated values case-insensitively', () => {
    assert.deepEqual(mailOk('size=5 body=7bit smtputf8 ret=full'), { size: 5, body: '7BIT', smtputf8: true, ret: 'FULL' });
  });

  test('ignores repeated spaces between parameters', () => {
    assert.deepEqual(mailOk('  SIZE=5   BODY=7BIT '), { size: 5, body: '7BIT' });
  });

  test('accepts SIZE equal to the maximum', () => {
    assert.equal(mailOk(`SIZE=${MAX}`).size, MAX);
  });

  test('refuses SIZE over the maximum with 552 5.3.4', () => {
    assertReply(parseMailParams(`SIZE=${MAX + 1}`, MAX), 552, '5.3.4');
    assertReply(parseMailParams('SIZE=99999999999999999999', MAX), 552, '5.3.4');
  });

  test('decodes ENVID from xtext', () => {
    assert.equal(mailOk('ENVID=a+2Bb+3Dc+20d').envid, 'a+b=c d');
  });

  const bad: [string, string][] = [
    ['SIZE without a value', 'SIZE'],
    ['SIZE that is not a number', 'SIZE=12k'],
    ['negative SIZE', 'SIZE=-1'],
    ['SIZE with 21 digits', 'SIZE=123456789012345678901'],
    ['BODY with an unknown value', 'BODY=BINARYMIME'],
    ['BODY without a value', 'BODY'],
    ['SMTPUTF8 with a value', 'SMTPUTF8=yes'],
    ['RET with an unknown value', 'RET=ALL'],
    ['RET without a value', 'RET'],
    ['ENVID without a value', 'ENVID'],
    ['ENVID with bad xtext', 'ENVID=a+zz'],
    ['ENVID with lower-case hex', 'ENVID=a+2b'],
    ['ENVID over 100 characters', `ENVID=${'x'.repeat(101)}`],
    ['an empty value', 'SIZE='],
    ['a keyword starting with a hyphen', '-X=1'],
    ['a value with a control character', 'ENVID=a\x01b'],
    ['ENVID with an escaped CR LF (would forge DSN fields)', 'ENVID=abc+0D+0AFinal-Recipient:+20rfc822;+20evil@x'],
    ['ENVID with an escaped NUL', 'ENVID=a+00b'],
    ['ENVID with an escaped non-ASCII octet', 'ENVID=a+E9b'],
    ['a value containing "="', 'ENVID=a=b'],
  ];
  for (const [what, text] of bad) {
    test(`refuses ${what} with 501 5.5.4`, () => {
      assertReply(parseMailParams(text, MAX), 501, '5.5.4');
    });
  }

  test('accepts ENVID of exactly 100 characters', () => {
    assert.equal(mailOk(`ENVID=${'x'.repeat(100)}`).envid, 'x'.repeat(100));
  });

  test('refuses a duplicate parameter with 501 5.5.4, whatever its case', () => {
    assertReply(parseMailParams('SIZE=1 SIZE=1', MAX), 501, '5.5.4');
    assertReply(parseMailParams('BODY=7BIT body=8BITMIME', MAX), 501, '5.5.4');
    assertReply(parseMailParams('SMTPUTF8 smtputf8', MAX), 501, '5.5.4');
  });

  test('refuses an unknown parameter with 555 5.5.4', () => {
    assertReply(parseMailParams('AUTH=<>', MAX), 555, '5.5.4');
    assertReply(parseMailParams('SIZE=10 XFOO', MAX), 555, '5.5.4');
  });

  test('refuses an RCPT-only parameter on MAIL with 555 5.5.4', () => {
    assertReply(parseMailParams('NOTIFY=NEVER', MAX), 555, '5.5.4');
  });
});

describe('parseRcptParams', () => {
  test('returns no parameters for empty text', () => {
    assert.deepEqual(rcptOk(''), {});
  });

  test('parses a NOTIFY list, dropping repeats', () => {
    assert.deepEqual(rcptOk('NOTIFY=SUCCESS,failure,DELAY,SUCCESS'), { notify: ['SUCCESS', 'FAILURE', 'DELAY'] });
  });

  test('turns NOTIFY=NEVER into an empty list', () => {
    assert.deepEqual(rcptOk('NOTIFY=never'), { notify: [] });
  });

  test('parses ORCPT, lower-casing rfc822 and decoding the xtext address', () => {
    assert.deepEqual(rcptOk('ORCPT=RFC822;user+2Btag@example.com'), { orcpt: 'rfc822;user+tag@example.com' });
    assert.deepEqual(rcptOk('ORCPT=utf-8;us\\x{E9}r@example.com'), { orcpt: 'utf-8;us\\x{E9}r@example.com' });
  });

  test('parses NOTIFY and ORCPT together', () => {
    assert.deepEqual(rcptOk('ORCPT=rfc822;a@b.example NOTIFY=FAILURE'), { orcpt: 'rfc822;a@b.example', notify: ['FAILURE'] });
  });

  const bad: [string, string][] = [
    ['NOTIFY without a value', 'NOTIFY'],
    ['NEVER combined with another value', 'NOTIFY=NEVER,SUCCESS'],
    ['an unknown NOTIFY value', 'NOTIFY=ALWAYS'],
    ['an empty NOTIFY item', 'NOTIFY=SUCCESS,'],
    ['ORCPT without a value', 'ORCPT'],
    ['ORCPT without an address type', 'ORCPT=;a@b.example'],
    ['ORCPT without a semicolon', 'ORCPT=a@b.example'],
    ['ORCPT with an empty address', 'ORCPT=rfc822;'],
    ['ORCPT with bad xtext', 'ORCPT=rfc822;a+4@b'],
    ['ORCPT with a bad address type', 'ORCPT=rfc_822;a@b'],
    ['ORCPT with an escaped CR LF (would forge DSN fields)', 'ORCPT=rfc822;bob+0D+0AX-Injected:+201@relay.test'],
    ['ORCPT over 500 characters', `ORCPT=rfc822;${'a'.repeat(501)}`],
  ];
  for (const [what, text] of bad) {
    test(`refuses ${what} with 501 5.5.4`, () => {
      assertReply(parseRcptParams(text), 501, '5.5.4');
    });
  }

  test('refuses a duplicate NOTIFY with 501 5.5.4', () => {
    assertReply(parseRcptParams('NOTIFY=SUCCESS NOTIFY=FAILURE'), 501, '5.5.4');
  });

  test('refuses an unknown parameter, including MAIL-only ones, with 555 5.5.4', () => {
    assertReply(parseRcptParams('XFOO=1'), 555, '5.5.4');
    assertReply(parseRcptParams('SIZE=100'), 555, '5.5.4');
  });
});

describe('decodeXtext', () => {
  const cases: [string, string | null][] = [
    ['', ''],
    ['plain', 'plain'],
    ['a+2Bb', 'a+b'],
    ['+3D', '='],
    ['+20+7E', ' ~'],
    ['+', null],
    ['+2', null],
    ['+2b', null],
    ['+GG', null],
    ['a=b', null],
    ['a b', null],
    ['caf\u00e9', null],
    // Escapes of control characters and non-ASCII octets: ENVID and ORCPT are printable US-ASCII.
    ['a+0D+0Ab', null],
    ['+00', null],
    ['+7F', null],
    ['+E9', null],
  ];
  for (const [input, want] of cases) {
    test(`decodes ${JSON.stringify(input)} to ${JSON.stringify(want)}`, () => {
      assert.equal(decodeXtext(input), want);
    });
  }
});

// ---- properties ----

const PARAM_PIECES = [
  'SIZE', 'BODY', 'SMTPUTF8', 'RET', 'ENVID', 'NOTIFY', 'ORCPT', 'AUTH', 'size', '=', ' ', ',', ';', '+', '+2B', '+ZZ',
  '7BIT', '8BITMIME', 'FULL', 'HDRS', 'NEVER', 'SUCCESS', 'rfc822', '0', '99999999999999999999', '-', '\u0000', 'ü', '\ud800',
];
const paramText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 60 }),
  fc.array(fc.constantFrom(...PARAM_PIECES), { maxLength: 20 }).map((xs) => xs.join('')),
);

const octets = fc.string({ unit: fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c)), maxLength: 40 });
const printableOctets = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 40 });
const NOT_PRINTABLE = /[^\x20-\x7e]/;

describe('parser properties', () => {
  test('parseCommand, parseMailParams and parseRcptParams never throw and return data or a reply', () => {
    fc.assert(
      fc.property(paramText, fc.integer({ min: 0, max: 2 ** 40 }), (text, max) => {
        const c = parseCommand(text);
        assert.equal(typeof c.verb, 'string');
        assert.equal(typeof c.args, 'string');
        for (const r of [parseMailParams(text, max), parseRcptParams(text)]) {
          assert.ok(typeof r === 'object' && r !== null);
          if (isReply(r)) {
            assert.ok([501, 552, 555].includes(r.code), `unexpected code ${r.code}`);
            assert.match(r.enhanced, /^5\.\d\.\d$/);
          }
        }
      }),
      { numRuns: 500 },
    );
  });

  test('decodeXtext never throws, inverts xtext encoding of printable ASCII, and refuses any other octet', () => {
    fc.assert(
      fc.property(octets, fc.string({ unit: 'binary', maxLength: 40 }), (s, junk) => {
        decodeXtext(junk);
        assert.equal(decodeXtext(encodeXtext(s)), NOT_PRINTABLE.test(s) ? null : s);
      }),
      { numRuns: 500 },
    );
  });

  test('any valid set of MAIL parameters, in any order and case, parses to what was written', () => {
    const arb = fc.record(
      {
        size: fc.integer({ min: 0, max: MAX }),
        body: fc.constantFrom('7BIT' as const, '8BITMIME' as const),
        smtputf8: fc.constant(true),
        ret: fc.constantFrom('FULL' as const, 'HDRS' as const),
        envid: fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 30 }),
      },
      { requiredKeys: [], noNullPrototype: true },
    );
    fc.assert(
      fc.property(arb, fc.boolean(), fc.nat(), (p, lower, seed) => {
        const parts: string[] = [];
        if (p.size !== undefined) parts.push(`SIZE=${p.size}`);
        if (p.body !== undefined) parts.push(`BODY=${p.body}`);
        if (p.smtputf8) parts.push('SMTPUTF8');
        if (p.ret !== undefined) parts.push(`RET=${p.ret}`);
        if (p.envid !== undefined) parts.push(`ENVID=${encodeXtext(p.envid)}`);
        // A deterministic shuffle from the seed.
        const shuffled = parts.map((x, i) => ({ x, k: (seed * (i + 7)) % 13 })).sort((a, b) => a.k - b.k).map((o) => o.x);
        const text = shuffled.map((x) => (lower ? x.replace(/^[A-Z0-9]+/, (k) => k.toLowerCase()) : x)).join(' ');
        assert.deepEqual(mailOk(text), p);
      }),
      { numRuns: 300 },
    );
  });

  test('SIZE is refused with 552 5.3.4 exactly when it exceeds the maximum', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 40 }), fc.integer({ min: 0, max: 2 ** 40 }), (size, max) => {
        const r = parseMailParams(`SIZE=${size}`, max);
        if (size > max) assertReply(r, 552, '5.3.4');
        else assert.deepEqual(r, { size });
      }),
      { numRuns: 300 },
    );
  });

  test('any NOTIFY list of known values parses to its distinct values in order', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom('SUCCESS', 'FAILURE', 'DELAY'), { minLength: 1, maxLength: 6 }), (xs) => {
        assert.deepEqual(rcptOk(`NOTIFY=${xs.join(',')}`).notify, [...new Set(xs)]);
      }),
      { numRuns: 200 },
    );
  });

  test('any ORCPT address round-trips through xtext', () => {
    fc.assert(
      fc.property(printableOctets.filter((s) => s.length > 0), (addr) => {
        assert.equal(rcptOk(`ORCPT=rfc822;${encodeXtext(addr)}`).orcpt, `rfc822;${addr}`);
      }),
      { numRuns: 300 },
    );
  });
});

describe('takeLine', () => {
  const take = (s: string, discarding = false) => takeLine(Buffer.from(s, 'latin1'), discarding);

  test('only CRLF ends a line; what follows stays for the next one', () => {
    const t = take('NOOP\r\nQUIT\r\n');
    assert.equal(t.kind, 'line');
    assert.equal(t.kind === 'line' && t.line, 'NOOP');
    assert.equal(t.kind === 'line' && t.rest.toString(), 'QUIT\r\n');
    assert.equal(take('NOOP').kind, 'none');
    assert.equal(take('NOOP\r').kind, 'none');
  });

  test('a bare LF, a CR inside the line, a NUL, invalid UTF-8 and an overlong line are refused and consumed', () => {
    for (const [input, expected] of [
      ['NOOP\nQUIT\r\n', R.bareLfCommand], ['NO\rOP\r\n', R.bareLfCommand], ['\n', R.bareLfCommand], ['NO\0OP\r\n', R.nulInCommand],
      ['MAIL FROM:<\xff@x>\r\n', null], [`NOOP ${'x'.repeat(MAX_COMMAND_LINE)}\r\n`, R.lineTooLong],
    ] as const) {
      const t = take(input);
      assert.equal(t.kind, 'bad', JSON.stringify(input));
      if (t.kind !== 'bad') continue;
      if (expected !== null) assert.equal(t.reply, expected, JSON.stringify(input));
      else assert.match(t.reply.lines.join(' '), /Invalid UTF-8/);
      assertReply(t.reply, 500, '5.5.2');
      assert.equal(t.rest.length, Buffer.from(input, 'latin1').length - Buffer.from(input, 'latin1').indexOf(0x0a) - 1);
    }
    const end = take('the end of a long line\r\nQUIT\r\n', true);
    assert.equal(end.kind === 'bad' && end.reply, R.lineTooLong);
    assert.equal(end.kind === 'bad' && end.rest.toString(), 'QUIT\r\n');
  });

  test('property: any bytes give none, a line without CR, LF or NUL, or a refusal; never a throw', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 3000 }), fc.boolean(), (bytes, discarding) => {
        const buf = Buffer.from(bytes);
        const t = takeLine(buf, discarding);
        if (t.kind === 'none') return assert.equal(buf.indexOf(0x0a), -1);
        assert.equal(t.rest.length, buf.length - buf.indexOf(0x0a) - 1);
        if (t.kind === 'line') assert.ok(!/[\r\n\0]/.test(t.line));
        else assert.ok(isReply(t.reply) && t.reply.code >= 500);
      }),
      { numRuns: 500 },
    );
  });
});
