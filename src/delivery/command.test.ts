// SPDX-License-Identifier: MIT
// Unit tests for the command agent's parts: exit status mapping (sysexits, a status line in the output,
// signals, the time limit), the environment a command sees, and real /bin/sh runs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { commandEnv, commandOutcome, startCommand } from './command.ts';

const exit = (code: number | null, signal: string | null = null, timedOut = false) => ({ code, signal, timedOut });

test('exit 0 is a delivery; sysexits codes keep their meaning; 75 and signals are tried again; the time limit bounces', () => {
  assert.deepEqual(commandOutcome(exit(0), Buffer.from('ignored')), { status: 'sent', dsn: '2.0.0', reply: 'delivered to command' });
  assert.deepEqual(commandOutcome(exit(75), Buffer.alloc(0)), { status: 'deferred', dsn: '4.3.0', reply: 'command exited with status 75 (temporary failure)' });
  assert.equal(commandOutcome(exit(67), Buffer.alloc(0)).dsn, '5.1.1');
  assert.equal(commandOutcome(exit(67), Buffer.alloc(0)).status, 'bounced');
  assert.equal(commandOutcome(exit(77), Buffer.alloc(0)).dsn, '5.7.0');
  assert.deepEqual(commandOutcome(exit(1), Buffer.alloc(0)), { status: 'bounced', dsn: '5.3.0', reply: 'command exited with status 1 (unknown error)' });
  assert.equal(commandOutcome(exit(null, 'SIGSEGV'), Buffer.alloc(0)).status, 'deferred');
  assert.deepEqual(commandOutcome(exit(null, 'SIGKILL', true), Buffer.alloc(0)), { status: 'bounced', dsn: '5.3.0', reply: 'command time limit exceeded' });
  assert.equal(commandOutcome({ ...exit(null), error: 'ENOENT' }, Buffer.alloc(0)).status, 'deferred');
});

test('a status line at the start of the output overrides the exit status; other output is never repeated', () => {
  assert.deepEqual(commandOutcome(exit(1), Buffer.from('4.2.2 mailbox full\nmore\n')), { status: 'deferred', dsn: '4.2.2', reply: 'command exited with status 1: 4.2.2 mailbox full' });
  assert.deepEqual(commandOutcome(exit(75), Buffer.from('5.7.1 not allowed\n')), { status: 'bounced', dsn: '5.7.1', reply: 'command exited with status 75: 5.7.1 not allowed' });
  const echoed = commandOutcome(exit(1), Buffer.from('Subject: secret body\r\n\r\nprivate words\n'));
  assert.doesNotMatch(echoed.reply, /secret|private/, 'output that is not a status line (it may be the message) stays out');
});

test('the environment has a fixed PATH and only known variables, with shell-special characters replaced', () => {
  const env = commandEnv({ SENDER: 'a$(reboot)`x`@b.test', RECIPIENT: 'list@mx.test', LD_PRELOAD: '/tmp/evil.so', PATH: '/tmp' });
  assert.equal(env.PATH, '/usr/local/bin:/usr/bin:/bin');
  assert.equal(env.SENDER, 'a__reboot__x_@b.test');
  assert.equal(env.RECIPIENT, 'list@mx.test');
  assert.equal(env.LD_PRELOAD, undefined);
  fc.assert(fc.property(fc.string(), (v) => /^[A-Za-z0-9!@%\-_=+:,./]*$/.test(commandEnv({ SENDER: v }).SENDER!)));
});

test('a real command gets the message on stdin and its variables; exit codes come back', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-cmd-'));
  try {
    const c = startCommand(`cat > ${dir}/msg; echo "$RECIPIENT $SENDER" > ${dir}/env`, { RECIPIENT: 'list@mx.test', SENDER: 's@x.test' }, 5000);
    await c.write(Buffer.from('Subject: hi\n\n'));
    await c.write(Buffer.from('body\n'));
    assert.equal((await c.finish()).status, 'sent');
    assert.equal(readFileSync(join(dir, 'msg'), 'utf8'), 'Subject: hi\n\nbody\n');
    assert.equal(readFileSync(join(dir, 'env'), 'utf8'), 'list@mx.test s@x.test\n');

    const t = startCommand('exit 75', {}, 5000);
    assert.equal((await t.finish()).status, 'deferred');

    // A command that exits without reading its input: the unread bytes are no failure.
    const quick = startCommand('exit 0', {}, 5000);
    await sleep(100);
    for (let i = 0; i < 20; i++) await quick.write(Buffer.alloc(65536, 120));
    assert.equal((await quick.finish()).status, 'sent');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a command over its time limit is killed with what it started', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-cmd-'));
  try {
    // The background child would create the file after 1 s if it survived its group being killed.
    const c = startCommand(`(sleep 1; touch ${dir}/survived) & sleep 30`, {}, 300);
    const o = await c.finish();
    assert.match(o.reply, /time limit/);
    await sleep(1500);
    assert.equal(existsSync(join(dir, 'survived')), false, 'the whole process group is gone');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a command that leaves a process in the background holding its output is answered when the shell exits', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-cmd-'));
  try {
    const c = startCommand(`sleep 30 & echo $! > ${dir}/pid; exit 0`, {}, 60_000);
    assert.equal((await c.finish()).status, 'sent');
    const pid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
    // Answered while the background process still runs (and holds the output pipe): it was not waited for,
    // and not killed either.
    assert.doesNotThrow(() => process.kill(pid, 0), 'the background process is still there');
    process.kill(pid, 'SIGKILL');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a command runs as the user given, with no supplementary groups', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-cmd-'));
  try {
    chmodSync(dir, 0o777);
    const c = startCommand(`id -u > ${dir}/uid; id -G > ${dir}/groups`, {}, 5000, { uid: 65534, gid: 65534 });
    assert.equal((await c.finish()).status, 'sent');
    assert.equal(readFileSync(join(dir, 'uid'), 'utf8').trim(), '65534');
    assert.equal(readFileSync(join(dir, 'groups'), 'utf8').trim(), '65534');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
