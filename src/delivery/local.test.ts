// SPDX-License-Identifier: MIT
// Unit tests for alias expansion: :include: files that include themselves or each other, and depth.

import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deliverLocal, expand, MAX_ALIAS_DEPTH, type LocalDeps } from './local.ts';
import { startCommand } from './command.ts';
import type { DeliveryJob } from '../core/delivery.ts';
import { createTable, parseAliases } from '../lookup/index.ts';

function deps(aliases: string, files: Record<string, string>, reads: string[]): LocalDeps {
  return {
    mailboxDir: '/nonexistent',
    localDomains: new Set(['mx.test']),
    aliases: new Map(parseAliases(aliases).entries.map((e) => [e.name, e])),
    recipients: createTable([]),
    hostname: 'mx.test',
    reinject: () => Promise.reject(new Error('not in this test')),
    readInclude: (path) => {
      reads.push(path);
      return path in files ? Promise.resolve(files[path]!) : Promise.reject(Object.assign(new Error('no file'), { code: 'ENOENT' }));
    },
  };
}

test(':include: lists are expanded into their members', async () => {
  const reads: string[] = [];
  const t = await expand('staff@mx.test', deps('staff: :include:/etc/staff\n', { '/etc/staff': 'alice\nbob, carol@remote.test\n' }, reads));
  assert.deepEqual(t, [
    { kind: 'mailbox', user: 'alice', address: 'alice@mx.test' },
    { kind: 'mailbox', user: 'bob', address: 'bob@mx.test' },
    { kind: 'remote', address: 'carol@remote.test' },
  ]);
});

test('an include file that includes itself is read once, and its members are still reached', async () => {
  const reads: string[] = [];
  const t = await expand('list@mx.test', deps('list: :include:/etc/list\n', { '/etc/list': 'bob, :include:/etc/list\n' }, reads));
  assert.deepEqual(reads, ['/etc/list']);
  assert.deepEqual(t, [{ kind: 'mailbox', user: 'bob', address: 'bob@mx.test' }]);
});

test('two include files that include each other end', async () => {
  const reads: string[] = [];
  const files = { '/etc/a': 'ann, :include:/etc/b\n', '/etc/b': 'ben, :include:/etc/a\n' };
  const t = await expand('x@mx.test', deps('x: :include:/etc/a\n', files, reads));
  assert.deepEqual(reads, ['/etc/a', '/etc/b']);
  assert.deepEqual(t.map((x) => x.kind === 'mailbox' ? x.user : x.kind), ['ann', 'ben']);
});

test('a chain of include files deeper than the alias depth limit is refused with 5.4.6', async () => {
  const files: Record<string, string> = {};
  for (let i = 0; i < MAX_ALIAS_DEPTH + 5; i++) files[`/etc/l${i}`] = `:include:/etc/l${i + 1}\n`;
  const reads: string[] = [];
  const t = await expand('deep@mx.test', deps('deep: :include:/etc/l0\n', files, reads));
  assert.ok(reads.length <= MAX_ALIAS_DEPTH, `read ${reads.length} files`);
  assert.equal(t.length, 1);
  assert.equal(t[0]!.kind, 'refused');
  assert.equal((t[0] as { dsn: string }).dsn, '5.4.6');
});

test('an alias that expands to nothing (include files that only include each other) bounces 5.4.6, never "sent"', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-local-'));
  try {
    const file = join(dir, 'msg');
    writeFileSync(file, 'Subject: x\r\n\r\nbody\r\n');
    const d = { ...deps('loop: :include:/etc/l\n', { '/etc/l': ':include:/etc/l\n' }, []), mailboxDir: join(dir, 'mail') };
    const job: DeliveryJob = { qid: '01ABCDEFGHJKMNPQ', file, route: { kind: 'local' }, nexthop: 'local', sender: 'a@example.com', recipients: [{ index: 0, address: 'loop@mx.test' }], smtputf8: false, eightBit: false };
    const r = await deliverLocal(job, { file, offset: 0, length: 22, eightBit: false }, d);
    assert.equal(r.results[0]!.status, 'bounced');
    assert.equal(r.results[0]!.dsn, '5.4.6');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('"|command" targets: refused while commands are off, taken from the aliases file when on, never from an include file', async () => {
  const aliases = 'list: "|/usr/bin/list-post --name a, b", alice\nincl: :include:/etc/incl\n';
  const files = { '/etc/incl': '"|/bin/true", bob\n' };
  const off = await expand('list@mx.test', deps(aliases, files, []));
  assert.deepEqual(off[0], { kind: 'refused', dsn: '5.7.1', reason: 'delivery to commands is disabled', address: 'list@mx.test' });
  const on = { ...deps(aliases, files, []), runCommand: () => Promise.reject(new Error('not run by expand')) };
  assert.deepEqual(await expand('list@mx.test', on), [
    { kind: 'command', command: '/usr/bin/list-post --name a, b', address: 'list@mx.test' },
    { kind: 'mailbox', user: 'alice', address: 'alice@mx.test' },
  ]);
  assert.deepEqual(await expand('incl@mx.test', on), [
    { kind: 'refused', dsn: '5.7.1', reason: 'commands in :include: files are not allowed', address: 'incl@mx.test' },
    { kind: 'mailbox', user: 'bob', address: 'bob@mx.test' },
  ]);
});

describe('commands in deliverLocal (real /bin/sh through startCommand)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-local-cmd-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const queueFile = join(dir, 'msg');
  writeFileSync(queueFile, 'Subject: hi\r\n\r\nbody\r\n');
  const msg = { file: queueFile, offset: 0, length: 21, eightBit: false };
  const runCommand: LocalDeps['runCommand'] = async (command, env, message) => {
    const c = startCommand(command, env, 5000);
    for await (const chunk of message) await c.write(chunk);
    return c.finish();
  };
  const job = (rcpts: string[]): DeliveryJob => ({
    qid: 'Q1', file: queueFile, route: { kind: 'local' }, nexthop: 'local', sender: 's@client.test', smtputf8: false, eightBit: false,
    recipients: rcpts.map((address, index) => ({ index, address })),
  });
  const withAliases = (aliases: string): LocalDeps => ({ ...deps(aliases, {}, []), mailboxDir: join(dir, 'mail'), runCommand });

  test('one command behind two aliases runs once per alias, each with its own environment', async () => {
    const d = withAliases(`a1: "|cat > ${dir}/out-$LOCAL"\na2: "|cat > ${dir}/out-$LOCAL"\n`);
    const res = await deliverLocal(job(['a1@mx.test', 'a2@mx.test', 'a1@mx.test']), msg, d);
    assert.deepEqual(res.results.map((r) => r.status), ['sent', 'sent', 'sent']);
    assert.match(readFileSync(join(dir, 'out-a1'), 'utf8'), /^From s@client\.test  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\nReturn-Path: <s@client\.test>\nX-Original-To: a1@mx\.test\nDelivered-To: a1@mx\.test\nSubject: hi\n\nbody\n$/);
    assert.match(readFileSync(join(dir, 'out-a2'), 'utf8'), /X-Original-To: a2@mx\.test\nDelivered-To: a2@mx\.test\n/);
  });

  test('a command failing for good next to a mailbox: the mailbox has the message, the recipient is reported bounced', async () => {
    const d = withAliases('b: "|exit 67", carol\n');
    const [r] = (await deliverLocal(job(['b@mx.test']), msg, d)).results;
    assert.equal(r!.status, 'bounced');
    assert.equal(r!.dsn, '5.1.1');
    assert.match(r!.reply, /status 67 \(user unknown\); delivered to the other targets: maildir \(carol\)/);
    assert.equal(readdirSync(join(dir, 'mail', 'carol', 'new')).length, 1);
  });

  test('a command saying "try again" defers the recipient before its mailboxes get anything', async () => {
    const d = withAliases('c: "|exit 75", dave\n');
    const [r] = (await deliverLocal(job(['c@mx.test']), msg, d)).results;
    assert.equal(r!.status, 'deferred');
    assert.equal(existsSync(join(dir, 'mail', 'dave')), false);
  });
});
