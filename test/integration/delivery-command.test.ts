// SPDX-License-Identifier: MIT
// "|command" aliases with [local] allow_commands on, the privilege drop on (run as root): the command gets the
// message as Postfix's local(8) gives it (From_ line, Return-Path:, X-Original-To:, Delivered-To:, LF line
// ends) and runs as command_user, which can read neither the queue nor reach cleanup; its exit status decides
// (sysexits: 67 bounces 5.1.1, 75 defers), the time limit defers, and a command in an include file bounces.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configText, runStart, startPalisade, type Running } from '../support/palisade.ts';
import { queueIdOf, sendMessage } from '../support/smtp-client.ts';
import { parseDsn, waitMaildir } from '../support/mailbox.ts';

/** A Palisade with the privilege drop and commands on; `out` is a directory every command may write to. */
interface WithCommands {
  readonly p: Running;
  readonly dir: string;
  readonly out: string;
  /** Stops Palisade (asserting exit 0) and removes both directories. */
  close(): Promise<void>;
}

/** Starts it with the aliases `aliases(dir, out)` returns (one line each; it may write files, such as include files, first) and the given command_timeout. */
async function startWithCommands(name: string, aliases: (dir: string, out: string) => string[], commandTimeout: string): Promise<WithCommands> {
  // The service users and the command user must traverse these directories.
  const dir = mkdtempSync(join(tmpdir(), `palisade-${name}-`));
  chmodSync(dir, 0o755);
  const out = mkdtempSync(join(tmpdir(), `palisade-${name}-out-`));
  chmodSync(out, 0o777);
  writeFileSync(join(dir, 'aliases'), [...aliases(dir, out), ''].join('\n'), { mode: 0o644 });
  let p: Running | undefined;
  const close = async () => {
    try {
      if (p !== undefined) assert.equal(await p.stop(), 0, 'Palisade exits 0 on SIGTERM');
    } finally {
      rmSync(dir, { recursive: true, force: true });
      rmSync(out, { recursive: true, force: true });
    }
  };
  try {
    p = await startPalisade({
      dir,
      dropPrivileges: true,
      workers: 1,
      toml: `[local]\naliases = "file:${join(dir, 'aliases')}"\nallow_commands = true\ncommand_timeout = "${commandTimeout}"\n` +
        '[queue]\nretry_min = "1h"\nretry_max = "1h"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\n',
    });
  } catch (e) {
    await close();
    throw e;
  }
  return { p, dir, out, close };
}

/** Sends `body` (LF line ends, dot-stuffed on the way) from alice@mx.test to `rcpt`; returns the queue ID. */
async function sendTo(p: Running, rcpt: string, body: string): Promise<string> {
  const r = await sendMessage(p.port, 'alice@mx.test', [rcpt], body);
  assert.equal(r.code, 250, r.lines.join(' | '));
  return queueIdOf(r);
}

describe('delivery to commands', () => {
  let p: Running;
  let dir: string;
  let out: string;
  let pc: WithCommands;
  before(async () => {
    pc = await startWithCommands('cmd', (dir, out) => {
      const spool = join(dir, 'var/spool');
      writeFileSync(join(dir, 'incl'), `"|touch ${out}/never"\n`, { mode: 0o644 });
      return [
        `pipe: "|cat > ${out}/msg-$QUEUE_ID; env > ${out}/env-$QUEUE_ID; kill -0 $PPID 2>/dev/null; echo $? > ${out}/signal-$QUEUE_ID; id -un > ${out}/user-$QUEUE_ID; ls ${spool}/active > ${out}/queue-$QUEUE_ID 2>&1; echo \\"exit $?\\" >> ${out}/queue-$QUEUE_ID; if [ -w ${spool}/private/cleanup ]; then echo reachable; else echo unreachable; fi > ${out}/cleanup-$QUEUE_ID"`,
        'nouser: "|cat > /dev/null; exit 67"',
        'later: "|exit 75"',
        'slow: "|sleep 60"',
        `incl: :include:${join(dir, 'incl')}`,
      ];
    }, '1s');
    ({ p, dir, out } = pc);
  });
  after(() => pc?.close());

  const send = (rcpt: string, body = 'Subject: to a command\nMessage-ID: <cmd@client.test>\n\nline one\n.dotted\n') => sendTo(p, rcpt, body);
  const outcome = (qid: string) => p.waitLog((l) => l.event === 'delivery' && l.qid === qid);

  test('the command reads the message with a From_ line and the delivery headers, as command_user, walled off from the queue', async () => {
    const qid = await send('pipe@mx.test');
    const o = await outcome(qid);
    assert.equal(o.status, 'sent', String(o.reply));
    const msg = readFileSync(join(out, `msg-${qid}`), 'utf8');
    assert.match(msg, /^From alice@mx\.test  [A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d \d{4}\nReturn-Path: <alice@mx\.test>\nX-Original-To: pipe@mx\.test\nDelivered-To: pipe@mx\.test\nReceived: /);
    assert.ok(msg.endsWith('Subject: to a command\nMessage-ID: <cmd@client.test>\n\nline one\n.dotted\n'), 'the message follows, dot-unstuffed, with LF line ends');
    assert.ok(!msg.includes('\r'));
    assert.equal(readFileSync(join(out, `user-${qid}`), 'utf8').trim(), 'nobody', 'runs as command_user (default nobody)');
    // Its parent is the command agent, which runs the other aliases' commands: not another process of its own.
    assert.equal(readFileSync(join(out, `signal-${qid}`), 'utf8').trim(), '1', 'cannot signal (or trace) the command agent');
    const env = readFileSync(join(out, `env-${qid}`), 'utf8');
    assert.match(env, /^PATH=\/usr\/local\/bin:\/usr\/bin:\/bin$/m);
    assert.match(env, /^RECIPIENT=pipe@mx\.test$/m);
    assert.match(env, new RegExp(`^QUEUE_ID=${qid}$`, 'm'));
    assert.doesNotMatch(env, /NODE_OPTIONS|--permission|--allow/, 'none of the agent\'s Node flags');
    const queue = readFileSync(join(out, `queue-${qid}`), 'utf8');
    assert.match(queue, /Permission denied/, queue);
    assert.doesNotMatch(queue, /exit 0/);
    // Connecting to a Unix socket takes write permission on it (and search on its directories).
    assert.equal(readFileSync(join(out, `cleanup-${qid}`), 'utf8').trim(), 'unreachable', 'cannot hand cleanup a message');
  });

  test('exit status 67 (EX_NOUSER) bounces 5.1.1 to the sender', async () => {
    const qid = await send('nouser@mx.test');
    const o = await outcome(qid);
    assert.equal(o.status, 'bounced');
    const [raw] = await waitMaildir(dir, 'alice');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.recipients.length, 1);
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; nouser@mx.test');
    assert.equal(dsn.recipients[0]!.status, '5.1.1');
    assert.match(dsn.recipients[0]!['diagnostic-code']!, /status 67 \(user unknown\)/);
  });

  test('exit status 75 (EX_TEMPFAIL) defers, with the reason in queue show; the time limit bounces 5.3.0', async () => {
    const later = await send('later@mx.test');
    const slow = await send('slow@mx.test');
    const a = await outcome(later);
    assert.equal(a.status, 'deferred');
    assert.equal(a.dsn, '4.3.0');
    assert.match(String(a.reply), /status 75 \(temporary failure\)/);
    const show = await p.cli(['queue', 'show', later]);
    assert.match(show.stdout, /^state: +deferred$/m);
    assert.match(show.stdout, /temporary failure/);
    const b = await outcome(slow);
    assert.equal(b.status, 'bounced', 'a command that hangs would hang again at every retry');
    assert.equal(b.dsn, '5.3.0');
    assert.match(String(b.reply), /time limit/);
  });

  test('a command in an :include: file is refused (5.7.1), never run', async () => {
    const qid = await send('incl@mx.test');
    const o = await outcome(qid);
    assert.equal(o.status, 'bounced', String(o.reply));
    assert.equal(existsSync(join(out, 'never')), false);
    assert.equal(o.dsn, '5.7.1');
    assert.match(String(o.reply), /:include:/);
  });

  test('without the privilege drop commands are refused at start (exit 78): they would run as root', async () => {
    const d = mkdtempSync(join(tmpdir(), 'palisade-cmd-nodrop-'));
    try {
      const config = join(d, 'palisade.toml');
      writeFileSync(config, configText(d) + '[local]\nallow_commands = true\n');
      const r = await runStart(config, d);
      assert.equal(r.killed, false, 'it refused instead of starting');
      assert.equal(r.code, 78, r.stderr);
      assert.match(r.stderr, /allow_commands needs the privilege drop/);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});

// A reload replaces the delivery agents and the command agent; the old ones finish what they run. A command
// that outlives drain_timeout (2 s here) and the old 5 s grace is not cut short, and does not run twice.
describe('reloads while a command runs', () => {
  let p: Running;
  let out: string;
  let pc: WithCommands;
  before(async () => {
    pc = await startWithCommands('cmd-reload', (_dir, out) => [
      `long: "|echo run >> ${out}/runs; sleep 9; cat > ${out}/long-$QUEUE_ID"`,
      `longfail: "|echo run >> ${out}/runs-fail; sleep 9; cat > /dev/null; exit 67"`,
      `quick: "|cat > ${out}/quick-$QUEUE_ID"`,
    ], '60s');
    ({ p, out } = pc);
  });
  after(() => pc?.close());

  const send = (rcpt: string) => sendTo(p, rcpt, `Subject: for ${rcpt}\n\nbody of ${rcpt}\n`);

  test('running commands finish once, with their outcome (sent; bounced with its DSN); new mail goes through the new agents meanwhile', async () => {
    const long = await send('long@mx.test');
    const fail = await send('longfail@mx.test');
    for (let i = 0; i < 100 && !(existsSync(join(out, 'runs')) && existsSync(join(out, 'runs-fail'))); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(existsSync(join(out, 'runs')) && existsSync(join(out, 'runs-fail')), 'both long commands started');
    const r = await p.cli(['reload']);
    assert.equal(r.code, 0, r.stderr);
    const quick = await send('quick@mx.test');
    const q = await p.waitLog((l) => l.event === 'delivery' && l.qid === quick);
    assert.equal(q.status, 'sent', String(q.reply));
    assert.equal(existsSync(join(out, `long-${long}`)), false, 'the long command was still running when new mail was delivered');
    // A second reload meanwhile: the next queue manager must not take the message up either.
    const again = await p.cli(['reload']);
    assert.equal(again.code, 0, again.stderr);
    const o = await p.waitLog((l) => l.event === 'delivery' && l.qid === long, 30_000);
    assert.equal(o.status, 'sent', String(o.reply));
    assert.match(readFileSync(join(out, `long-${long}`), 'utf8'), /body of long@mx\.test/);
    await p.waitLog((l) => l.event === 'removed' && l.qid === long);
    assert.equal(readFileSync(join(out, 'runs'), 'utf8'), 'run\n', 'ran once');
    // The failure is final (EX_NOUSER): its DSN goes to the sender, and the command is not run again.
    const f = await p.waitLog((l) => l.event === 'delivery' && l.qid === fail, 30_000);
    assert.equal(f.status, 'bounced', String(f.reply));
    await p.waitLog((l) => l.event === 'dsn' && l.qid === fail);
    const dsn = await parseDsn((await waitMaildir(p.dir, 'alice', 1)).at(-1)!);
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; longfail@mx.test');
    assert.equal(dsn.recipients[0]!['status'], '5.1.1');
    await p.waitLog((l) => l.event === 'removed' && l.qid === fail);
    assert.equal(readFileSync(join(out, 'runs-fail'), 'utf8'), 'run\n', 'the failed command ran once');
  });
});
