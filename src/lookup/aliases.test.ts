// SPDX-License-Identifier: MIT
// Unit tests for aliases(5) parsing: entries, continuation lines, comments, and problems with their lines.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { includePaths, parseAliases, splitTargets } from './aliases.ts';

describe('parseAliases', () => {
  test('parses names and comma-separated targets with their line numbers', () => {
    const { entries, problems } = parseAliases('postmaster: root\nteam: alice, bob@example.com ,carol\n');
    assert.deepEqual(problems, []);
    assert.deepEqual(entries, [
      { name: 'postmaster', targets: ['root'], line: 1 },
      { name: 'team', targets: ['alice', 'bob@example.com', 'carol'], line: 2 },
    ]);
  });

  test('lower-cases names and strips quotes around them', () => {
    const { entries } = parseAliases('Sales: a\n"Help-Desk": b\n');
    assert.deepEqual(entries.map((e) => e.name), ['sales', 'help-desk']);
  });

  test('joins continuation lines that start with whitespace to the entry above', () => {
    const { entries, problems } = parseAliases('list: a,\n  b,\n\tc\nother: d\n');
    assert.deepEqual(problems, []);
    assert.deepEqual(entries, [
      { name: 'list', targets: ['a', 'b', 'c'], line: 1 },
      { name: 'other', targets: ['d'], line: 4 },
    ]);
  });

  test('skips comments and blank lines, also between continuation lines, and counts lines correctly', () => {
    const { entries } = parseAliases('# header\n\nlist: a,\n# note\n   \n  b\n\r\nlast: z\r\n');
    assert.deepEqual(entries, [
      { name: 'list', targets: ['a', 'b'], line: 3 },
      { name: 'last', targets: ['z'], line: 8 },
    ]);
  });

  test('accepts CRLF line ends', () => {
    assert.deepEqual(parseAliases('a: b\r\nc: d\r\n').entries.map((e) => e.targets), [['b'], ['d']]);
  });

  test('reports a duplicate name with both lines and keeps the first entry', () => {
    const { entries, problems } = parseAliases('root: a\nother: x\nROOT: b\n');
    assert.deepEqual(entries.map((e) => [e.name, e.targets]), [['root', ['a']], ['other', ['x']]]);
    assert.deepEqual(problems, [{ line: 3, message: 'alias "root" repeats line 1' }]);
  });

  test('reports a line without a colon with its line number', () => {
    const { entries, problems } = parseAliases('a: b\nno colon here\nc: d\n');
    assert.equal(entries.length, 2);
    assert.deepEqual(problems, [{ line: 2, message: 'expected "name: target, ..."' }]);
  });

  test('reports a line that starts with a colon', () => {
    assert.deepEqual(parseAliases(': x\n').problems, [{ line: 1, message: 'expected "name: target, ..."' }]);
  });

  test('reports an alias without targets', () => {
    assert.deepEqual(parseAliases('empty:\n').problems, [{ line: 1, message: 'alias "empty" has no targets' }]);
    assert.deepEqual(parseAliases('empty: , ,\n').problems, [{ line: 1, message: 'alias "empty" has no targets' }]);
  });

  test('reports a name with spaces or @', () => {
    assert.deepEqual(parseAliases('two words: x\n').problems, [{ line: 1, message: 'bad alias name "two words"' }]);
    assert.deepEqual(parseAliases('a@b: x\n').problems, [{ line: 1, message: 'bad alias name "a@b"' }]);
  });

  test('reports a continuation line before any entry as a problem', () => {
    assert.deepEqual(parseAliases('  stray\n').problems, [{ line: 1, message: 'expected "name: target, ..."' }]);
  });

  test('gives nothing for empty text', () => {
    assert.deepEqual(parseAliases(''), { entries: [], problems: [] });
  });
});

describe('parseAliases properties', () => {
  const name = fc.stringMatching(/^[a-z][a-z0-9._-]{0,10}$/);
  const target = fc.stringMatching(/^[a-z0-9._+-]{1,10}(@[a-z]{1,8}\.example)?$/);

  test('any set of well-formed entries, written across continuation lines, parses back', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(name, fc.array(target, { minLength: 1, maxLength: 5 }), fc.nat()), { selector: ([n]) => n, maxLength: 10 }),
        (list) => {
          const lines: string[] = [];
          const want: { name: string; targets: string[]; line: number }[] = [];
          for (const [n, ts, wrapAt] of list) {
            if (wrapAt % 3 === 0) lines.push('# comment');
            want.push({ name: n, targets: ts, line: lines.length + 1 });
            const cut = 1 + (wrapAt % ts.length);
            lines.push(`${n}: ${ts.slice(0, cut).join(', ')}${cut < ts.length ? ',' : ''}`);
            if (cut < ts.length) lines.push(`    ${ts.slice(cut).join(', ')}`);
          }
          const { entries, problems } = parseAliases(lines.join('\n') + '\n');
          assert.deepEqual(problems, []);
          assert.deepEqual(entries, want);
        },
      ),
      { numRuns: 300 },
    );
  });

  test('never throws and reports every problem with a line inside the text', () => {
    const piece = fc.constantFrom('a', 'B', ':', ',', ' ', '\t', '\n', '\r\n', '#', '"', '@', 'x@y', 'ü');
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 60 }).map((xs) => xs.join('')), (text) => {
        const lineCount = text.split('\n').length;
        const { entries, problems } = parseAliases(text);
        for (const p of problems) assert.ok(p.line >= 1 && p.line <= lineCount);
        for (const e of entries) {
          assert.ok(e.targets.length > 0);
          assert.equal(e.name, e.name.toLowerCase());
        }
        assert.equal(new Set(entries.map((e) => e.name)).size, entries.length);
      }),
      { numRuns: 300 },
    );
  });
});

test('a quoted command keeps its commas and loses its quotes; a quoted local part keeps its quotes', () => {
  assert.deepEqual(splitTargets(' "|/usr/bin/post --to a,b" , alice, "john doe"@example.org,, '), ['|/usr/bin/post --to a,b', 'alice', '"john doe"@example.org']);
  assert.deepEqual(splitTargets('"|echo \\"x, y\\""'), ['|echo "x, y"']);
  const { entries, problems } = parseAliases('list: "|/usr/bin/post a, b", bob\n');
  assert.deepEqual(problems, []);
  assert.deepEqual(entries[0]!.targets, ['|/usr/bin/post a, b', 'bob']);
});

test('splitTargets: any text gives trimmed, non-empty targets; a list of plain targets comes back as written', () => {
  fc.assert(fc.property(fc.string(), (s) => splitTargets(s).every((t) => t !== '' && t === t.trim())));
  const plain = fc.stringMatching(/^[a-z0-9._+@-]{1,12}$/);
  fc.assert(fc.property(fc.array(plain, { minLength: 1, maxLength: 6 }), (ts) => assert.deepEqual(splitTargets(ts.join(' ,  ')), ts)));
});

test('includePaths: regular files the aliases name; nested includes only through files only root can change', () => {
  const files: Record<string, { text: string; uid: number; mode: number; isFile?: boolean }> = {
    '/etc/lists/root-list': { text: 'a, :include:/etc/lists/nested\n', uid: 0, mode: 0o100644 },
    '/etc/lists/nested': { text: 'b\n', uid: 0, mode: 0o100644 },
    '/home/u/list': { text: 'c, :include:/etc/shadow\n:include:/\n', uid: 1000, mode: 0o100644 },
    '/etc/lists/writable': { text: ':include:/etc/secret\n', uid: 0, mode: 0o100666 },
    '/etc/shadow': { text: 'x', uid: 0, mode: 0o100640 },
    '/': { text: '', uid: 0, mode: 0o40755, isFile: false },
  };
  const { entries } = parseAliases('l1: :include:/etc/lists/root-list\nl2: :include:/home/u/list\nl3: :include:/etc/lists/writable\nl4: :include:/\nl5: :include:/nonexistent\n');
  const got = includePaths(
    entries,
    (p) => files[p]!.text,
    (p) => (p in files ? { isFile: files[p]!.isFile ?? true, uid: files[p]!.uid, mode: files[p]!.mode } : null),
  );
  assert.deepEqual(got.sort(), ['/etc/lists/nested', '/etc/lists/root-list', '/etc/lists/writable', '/home/u/list']);
});
