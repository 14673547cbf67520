// SPDX-License-Identifier: MIT
// Unit tests for the RFC 5321 path parser: syntax, normalisation, SMTPUTF8, bounds, and properties over any input.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  parsePath, parseMailbox, parseDomain, parseAddressLiteral, mailboxToString,
  MAX_LOCAL_PART, MAX_PATH, type Mailbox,
} from './address.ts';

// Parses a path that must be accepted and returns its mailbox.
function mailboxOf(input: string, allowUtf8 = false): Mailbox {
  const r = parsePath(input, false, allowUtf8);
  assert.ok(r.ok, `expected ${JSON.stringify(input)} to parse, got ${JSON.stringify(r)}`);
  assert.ok(r.mailbox !== null);
  return r.mailbox;
}

// The problem reported for a path that must be refused.
function problemOf(input: string, allowNull = false, allowUtf8 = false): string {
  const r = parsePath(input, allowNull, allowUtf8);
  assert.ok(!r.ok, `expected ${JSON.stringify(input)} to be refused, got ${JSON.stringify(r)}`);
  return r.problem;
}

describe('parsePath', () => {
  test('accepts a plain path and returns its parts with no flags set', () => {
    const r = parsePath('<user@example.com>', false, false);
    assert.deepEqual(r, {
      ok: true,
      mailbox: { local: 'user', domain: 'example.com', literal: false, utf8: false, routing: false, sourceRoute: false },
      rest: '',
    });
  });

  test('lower-cases the domain and removes its trailing dot, keeping the local part as written', () => {
    const m = mailboxOf('<John.Smith@Mail.EXAMPLE.Com.>');
    assert.equal(m.local, 'John.Smith');
    assert.equal(m.domain, 'mail.example.com');
  });

  test('returns the parameter text after the closing bracket without leading spaces', () => {
    const r = parsePath('<a@b.example>  SIZE=100 BODY=8BITMIME', false, false);
    assert.ok(r.ok);
    assert.equal(r.rest, 'SIZE=100 BODY=8BITMIME');
  });

  test('refuses text glued to the closing bracket', () => {
    assert.equal(problemOf('<a@b.example>SIZE=100'), 'syntax');
  });

  test('accepts the null path only where it is allowed', () => {
    assert.deepEqual(parsePath('<>', true, false), { ok: true, mailbox: null, rest: '' });
    assert.deepEqual(parsePath('<> SIZE=10', true, false), { ok: true, mailbox: null, rest: 'SIZE=10' });
    assert.equal(problemOf('<>', false), 'syntax');
  });

  const syntaxErrors: [string, string][] = [
    ['no angle brackets', 'user@example.com'],
    ['unclosed bracket', '<user@example.com'],
    ['nested bracket', '<a<b@example.com>'],
    ['no domain', '<user>'],
    ['empty local part', '<@example.com>'],
    ['empty domain', '<user@>'],
    ['leading dot in local part', '<.user@example.com>'],
    ['trailing dot in local part', '<user.@example.com>'],
    ['double dot in local part', '<us..er@example.com>'],
    ['space in local part', '<us er@example.com>'],
    ['two @ signs', '<a@b@example.com>'],
    ['label starting with a hyphen', '<a@-b.example.com>'],
    ['label ending with a hyphen', '<a@b-.example.com>'],
    ['empty label', '<a@b..example.com>'],
    ['underscore in domain', '<a@b_c.example.com>'],
    ['unterminated quoted string', '<"abc@example.com>'],
    ['control character in quoted string', '<"a\x01b"@example.com>'],
    ['DEL in quoted string', '<"a\x7fb"@example.com>'],
    ['text after quoted string before @', '<"a"b@example.com>'],
    ['quoted-pair escaping a control character', '<"a\\\x01"@example.com>'],
    ['source route without a colon', '<@a.example,user@example.com>'],
    ['source route hop without @', '<@a.example,b.example:user@example.com>'],
    ['empty source route hop', '<@:user@example.com>'],
    ['bad IPv4 octet', '<a@[192.0.2.256]>'],
    ['IPv4 octet with leading zero', '<a@[192.0.2.01]>'],
    ['general address literal', '<a@[x-tag:abc]>'],
    ['domain name in brackets', '<a@[example.com]>'],
  ];
  for (const [what, input] of syntaxErrors) {
    test(`refuses a path with ${what} as a syntax error`, () => {
      assert.equal(problemOf(input, true, true), 'syntax');
    });
  }

  test('keeps a quoted local part quoted only when it is not a plain dot-string', () => {
    assert.equal(mailboxOf('<"john"@example.com>').local, 'john');
    assert.equal(mailboxOf('<"john.smith"@example.com>').local, 'john.smith');
    assert.equal(mailboxOf('<"john smith"@example.com>').local, '"john smith"');
    assert.equal(mailboxOf('<".john"@example.com>').local, '".john"');
  });

  test('unescapes needless quoted-pairs and re-escapes quotes and backslashes', () => {
    assert.equal(mailboxOf('<"j\\ohn"@example.com>').local, 'john');
    assert.equal(mailboxOf('<"a\\"b"@example.com>').local, '"a\\"b"');
    assert.equal(mailboxOf('<"a\\\\b"@example.com>').local, '"a\\\\b"');
  });

  test('finds the closing bracket after a quoted string that contains ">"', () => {
    const r = parsePath('<"a>b"@example.com> SIZE=1', false, false);
    assert.ok(r.ok && r.mailbox !== null);
    assert.equal(r.mailbox.local, '"a>b"');
    assert.equal(r.rest, 'SIZE=1');
  });

  test('accepts and ignores a source route, flagging it', () => {
    const m = mailboxOf('<@relay1.example,@Relay2.example:user@Final.example>');
    assert.equal(m.sourceRoute, true);
    assert.equal(m.local, 'user');
    assert.equal(m.domain, 'final.example');
    assert.equal(mailboxToString(m), 'user@final.example');
  });

  test('flags sender-specified routing: percent hack, bang path and quoted @', () => {
    assert.equal(mailboxOf('<user%other.example@example.com>').routing, true);
    assert.equal(mailboxOf('<other.example!user@example.com>').routing, true);
    assert.equal(mailboxOf('<"user@other.example"@example.com>').routing, true);
    assert.equal(mailboxOf('<"user%other"@example.com>').routing, true);
    assert.equal(mailboxOf('<"user name"@example.com>').routing, false);
    assert.equal(mailboxOf('<user+tag@example.com>').routing, false);
  });

  test('accepts an IPv4 address literal', () => {
    const m = mailboxOf('<postmaster@[192.0.2.1]>');
    assert.equal(m.domain, '[192.0.2.1]');
    assert.equal(m.literal, true);
  });

  test('accepts an IPv6 address literal and normalises it', () => {
    const m = mailboxOf('<user@[IPv6:2001:DB8:0:0::1]>');
    assert.equal(m.domain, '[IPv6:2001:db8::1]');
    assert.equal(m.literal, true);
  });

  test('refuses a non-ASCII local part without SMTPUTF8 as the utf8 problem', () => {
    assert.equal(problemOf('<jörg@example.com>'), 'utf8');
    assert.equal(problemOf('<"jörg"@example.com>'), 'utf8');
  });

  test('refuses a non-ASCII domain without SMTPUTF8 as the utf8 problem', () => {
    assert.equal(problemOf('<user@bücher.example>'), 'utf8');
  });

  test('accepts a non-ASCII local part with SMTPUTF8 and marks the mailbox utf8', () => {
    const m = mailboxOf('<jörg@example.com>', true);
    assert.equal(m.local, 'jörg');
    assert.equal(m.utf8, true);
  });

  test('converts an IDN to lower-case A-labels with SMTPUTF8', () => {
    const m = mailboxOf('<user@BÜCHER.example.>', true);
    assert.equal(m.domain, 'xn--bcher-kva.example');
    assert.equal(m.utf8, true);
    assert.equal(mailboxOf('<用户@例子.广告>', true).domain, 'xn--fsqu00a.xn--4rr70v');
  });

  test('accepts a local part of exactly 64 octets and refuses 65 as too long', () => {
    assert.equal(mailboxOf(`<${'a'.repeat(MAX_LOCAL_PART)}@example.com>`).local.length, 64);
    assert.equal(problemOf(`<${'a'.repeat(MAX_LOCAL_PART + 1)}@example.com>`), 'too-long');
  });

  test('counts local-part length in UTF-8 octets, not characters', () => {
    // 33 × "é" = 66 octets.
    assert.equal(problemOf(`<${'é'.repeat(33)}@example.com>`, false, true), 'too-long');
    assert.ok(parsePath(`<${'é'.repeat(32)}@example.com>`, false, true).ok);
  });

  test('accepts a path of exactly 256 octets with brackets and refuses 257 as too long', () => {
    const domainOf = (len: number) => {
      const labels: string[] = [];
      let left = len;
      while (left > 0) {
        const n = Math.min(63, left === 64 ? 62 : left);
        labels.push('d'.repeat(n));
        left -= n + 1;
      }
      return labels.join('.');
    };
    const local = 'u'.repeat(10);
    const fits = `<${local}@${domainOf(MAX_PATH - 2 - local.length - 1)}>`;
    assert.equal(Buffer.byteLength(fits), MAX_PATH);
    assert.ok(parsePath(fits, false, false).ok);
    const over = `<${local}x@${domainOf(MAX_PATH - 2 - local.length - 1)}>`;
    assert.equal(Buffer.byteLength(over), MAX_PATH + 1);
    assert.equal(problemOf(over), 'too-long');
  });

  test('refuses an over-long path as too long even when its syntax is also bad', () => {
    assert.equal(problemOf(`<${' '.repeat(300)}>`), 'too-long');
  });
});

describe('parseMailbox', () => {
  test('reports a domain over 255 octets as too long, not as a syntax error', () => {
    const domain = ['a'.repeat(63), 'b'.repeat(63), 'c'.repeat(63), 'd'.repeat(63)].join('.'); // 255
    assert.equal((parseMailbox(`u@${domain}`, false) as Mailbox).domain, domain);
    assert.equal(parseMailbox(`u@${domain}x`, false), 'syntax'); // label of 64
    assert.equal(parseMailbox(`u@e.${domain}`, false), 'too-long');
  });

  test('refuses a non-ASCII quoted local part when utf8 is off', () => {
    assert.equal(parseMailbox('"ü"@example.com', false), 'syntax');
    assert.equal((parseMailbox('"ü x"@example.com', true) as Mailbox).local, '"ü x"');
  });
});

describe('parseDomain', () => {
  const cases: [string, boolean, string | null][] = [
    ['Example.COM', false, 'example.com'],
    ['example.com.', false, 'example.com'],
    ['a', false, 'a'],
    ['xn--bcher-kva.example', false, 'xn--bcher-kva.example'],
    ['bücher.example', false, null],
    ['bücher.example', true, 'xn--bcher-kva.example'],
    ['BÜCHER.Example.', true, 'xn--bcher-kva.example'],
    ['', false, null],
    ['.', false, null],
    ['example.com..', false, null],
    ['.example.com', false, null],
    ['exa mple.com', false, null],
    ['bü cher.example', true, null],
    ['bü@cher.example', true, null],
    ['-a.example', false, null],
    ['a-.example', false, null],
    ['a-b.example', false, 'a-b.example'],
    [`${'l'.repeat(63)}.example`, false, `${'l'.repeat(63)}.example`],
    [`${'l'.repeat(64)}.example`, false, null],
  ];
  for (const [input, utf8, want] of cases) {
    test(`turns ${JSON.stringify(input)}${utf8 ? ' (utf8)' : ''} into ${JSON.stringify(want)}`, () => {
      assert.equal(parseDomain(input, utf8), want);
    });
  }

  test('refuses a domain longer than 255 octets', () => {
    const d255 = ['a'.repeat(63), 'b'.repeat(63), 'c'.repeat(63), 'd'.repeat(63)].join('.');
    assert.equal(parseDomain(d255, false), d255);
    assert.equal(parseDomain(`${d255}.`, false), d255);
    assert.equal(parseDomain(`e.${d255}`, false), null);
  });

  test('refuses an IDN whose A-label form is longer than 255 octets', () => {
    const label = 'ü'.repeat(20); // A-label "xn--..." is far longer than 20 characters
    const d = Array.from({ length: 10 }, () => label).join('.');
    assert.ok(d.length < 255);
    assert.equal(parseDomain(d, true), null);
  });
});

describe('parseAddressLiteral', () => {
  const cases: [string, string | null][] = [
    ['[192.0.2.1]', '[192.0.2.1]'],
    ['[0.0.0.0]', '[0.0.0.0]'],
    ['[255.255.255.255]', '[255.255.255.255]'],
    ['[256.1.1.1]', null],
    ['[1.2.3]', null],
    ['[1.2.3.4.5]', null],
    ['[01.2.3.4]', null],
    ['[IPv6:::1]', '[IPv6:::1]'],
    ['[ipv6:2001:DB8::1]', '[IPv6:2001:db8::1]'],
    ['[IPv6:2001:db8:0:0:0:0:0:1]', '[IPv6:2001:db8::1]'],
    ['[IPv6:1.2.3.4]', null],
    ['[IPv6:fe80::1%eth0]', null],
    ['[IPv6:12345::]', null],
    ['[IPv6:]', null],
    ['[::1]', null],
    ['192.0.2.1', null],
    ['[192.0.2.1', null],
    ['[]', null],
  ];
  for (const [input, want] of cases) {
    test(`turns ${JSON.stringify(input)} into ${JSON.stringify(want)}`, () => {
      assert.equal(parseAddressLiteral(input), want);
    });
  }
});

// ---- properties ----

const ATEXT_CHARS = "abcXYZ019!#$%&'*+-/=?^_`{|}~";
// Pieces that make near-miss paths far more often than uniform random text does.
const PIECES = [
  '<', '>', '"', '\\', '@', ':', ',', '[', ']', '.', '%', '!', ' ', 'a', 'Z', '0', '-', 'ü', '用', '\u0000', '\x7f',
  '\ud800', 'IPv6:', '::1', '192.0.2.1', 'xn--', 'example.com', 'postmaster', '<>', '@a.example:',
];
const nearMiss = fc.array(fc.constantFrom(...PIECES), { maxLength: 30 }).map((xs) => xs.join(''));
const anyText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 40 }),
  nearMiss,
  nearMiss.map((s) => `<${s}>`),
  fc.string({ maxLength: 400 }).map((s) => `<${s}@example.com>`),
);

const label = fc
  .tuple(fc.stringMatching(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?$/))
  .map(([l]) => l);
const asciiDomain = fc.array(label, { minLength: 1, maxLength: 4 }).map((ls) => ls.join('.'));
const dotAtom = fc
  .array(fc.string({ unit: fc.constantFrom(...ATEXT_CHARS), minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 4 })
  .map((ps) => ps.join('.'));
const qtext = fc.string({ unit: fc.integer({ min: 32, max: 126 }).map((c) => String.fromCharCode(c)), maxLength: 20 });
const quotedLocal = qtext.map((s) => '"' + s.replace(/(["\\])/g, '\\$1') + '"');

describe('address parser properties', () => {
  test('no input makes parsePath, parseMailbox, parseDomain or parseAddressLiteral throw', () => {
    fc.assert(
      fc.property(anyText, fc.boolean(), fc.boolean(), (s, allowNull, utf8) => {
        parsePath(s, allowNull, utf8);
        parseMailbox(s, utf8);
        parseDomain(s, utf8);
        parseAddressLiteral(s);
        parseAddressLiteral(`[${s}]`);
        parseAddressLiteral(`[IPv6:${s}]`);
      }),
      { numRuns: 500 },
    );
  });

  test('every accepted mailbox is within bounds, lower-case and ASCII in its domain', () => {
    fc.assert(
      fc.property(anyText, fc.boolean(), (s, utf8) => {
        const r = parsePath(s, true, utf8);
        if (!r.ok || r.mailbox === null) return;
        const m = r.mailbox;
        assert.ok(Buffer.byteLength(m.local) <= MAX_LOCAL_PART);
        assert.ok(m.domain.length <= 255);
        assert.equal(m.domain, m.domain.toLowerCase().replace('ipv6:', 'IPv6:'));
        assert.ok(!m.domain.endsWith('.'));
        assert.ok(/^[\x21-\x7e]+$/.test(m.domain));
        if (!utf8) assert.equal(m.utf8, false);
      }),
      { numRuns: 500 },
    );
  });

  test('a dot-atom local part and an LDH domain round-trip, with only the domain normalised', () => {
    fc.assert(
      fc.property(dotAtom, asciiDomain, fc.boolean(), (local, domain, dot) => {
        const input = `<${local}@${domain}${dot ? '.' : ''}>`;
        fc.pre(Buffer.byteLength(input) <= MAX_PATH && local.length <= MAX_LOCAL_PART);
        const m = mailboxOf(input);
        assert.equal(m.local, local);
        assert.equal(m.domain, domain.toLowerCase());
        assert.equal(m.routing, local.includes('%') || local.includes('!'));
      }),
      { numRuns: 300 },
    );
  });

  test('normalisation is idempotent: re-parsing a rendered mailbox gives the same mailbox', () => {
    const domainPart = fc.oneof(
      asciiDomain,
      fc.constantFrom('[192.0.2.7]', '[IPv6:2001:DB8::7]', 'Bücher.Example', '例子.广告'),
    );
    fc.assert(
      fc.property(fc.oneof(dotAtom, quotedLocal), domainPart, (local, domain) => {
        const r = parsePath(`<${local}@${domain}>`, false, true);
        if (!r.ok || r.mailbox === null) return;
        const again = `<${mailboxToString(r.mailbox)}>`;
        fc.pre(Buffer.byteLength(again) <= MAX_PATH);
        const m2 = mailboxOf(again, true);
        assert.equal(m2.local, r.mailbox.local);
        assert.equal(m2.domain, r.mailbox.domain);
        assert.equal(m2.literal, r.mailbox.literal);
        assert.equal(m2.routing, r.mailbox.routing);
      }),
      { numRuns: 300 },
    );
  });

  test('any quoted local part of printable ASCII is accepted and flagged for routing exactly when it holds @, % or !', () => {
    fc.assert(
      fc.property(qtext, (content) => {
        const quoted = '"' + content.replace(/(["\\])/g, '\\$1') + '"';
        fc.pre(Buffer.byteLength(quoted) <= MAX_LOCAL_PART);
        const m = mailboxOf(`<${quoted}@example.com>`);
        assert.equal(m.routing, /[@%!]/.test(content));
      }),
      { numRuns: 300 },
    );
  });

  test('a non-ASCII address is refused as utf8 without SMTPUTF8 whenever it is accepted with it', () => {
    const nonAscii = fc.string({ unit: fc.constantFrom('ü', 'é', '用', 'a', 'b', '.'), minLength: 1, maxLength: 10 });
    fc.assert(
      fc.property(nonAscii, asciiDomain, (local, domain) => {
        fc.pre(/[^\x00-\x7f]/.test(local));
        const input = `<${local}@${domain}>`;
        if (parsePath(input, false, true).ok) assert.equal(problemOf(input, false, false), 'utf8');
      }),
      { numRuns: 200 },
    );
  });
});
