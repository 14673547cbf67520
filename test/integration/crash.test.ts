// SPDX-License-Identifier: MIT
// Crash safety: kill -9 of the cleanup process mid-message never yields a 250 or a partial queue file; a
// message acknowledged with 250 survives kill -9 of cleanup and a full restart; SIGTERM drains sessions.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import { childProcesses, startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf, summary } from '../support/smtp-client.ts';
import { KEEP_QUEUED, partialFiles, queuedIds, readQueued, splitReceived, spoolFiles } from '../support/queue.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { parseDsn, waitMaildir } from '../support/mailbox.ts';

/** PID of master's cleanup child (found with ps, never by name across the machine). */
function cleanupPid(p: Running): number | undefined {
  return childProcesses(p.proc.pid!).find((c) => / child cleanup$/.test(c.args))?.pid;
}

/** kill -9 of the current cleanup; resolves with the PID of the one master starts in its place. */
async function killCleanup(p: Running): Promise<{ old: number; fresh: () => Promise<number> }> {
  const old = cleanupPid(p);
  assert.ok(old !== undefined, 'master has a cleanup child');
  process.kill(old, 'SIGKILL');
  return {
    old,
    fresh: () => waitFor('a new cleanup child', () => {
      const pid = cleanupPid(p);
      return pid !== undefined && pid !== old ? pid : undefined;
    }, 15_000),
  };
}

/** Resolves once something accepts connections on cleanup's socket again. */
function cleanupListening(p: Running): Promise<true> {
  const path = join(p.spool, 'private', 'cleanup');
  return waitFor('cleanup to listen', () => new Promise<true | undefined>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(undefined));
  }), 15_000);
}

/** Sends one small message on a new session; returns the 250 reply's queue ID. */
async function sendOne(port: number, body: string): Promise<string> {
  const c = await openSession(port);
  try {
    await c.ok('MAIL FROM:<a@example.com>');
    await c.ok('RCPT TO:<user@mx.test>');
    await c.ok('DATA', 354);
    c.write(body + '.\r\n');
    return queueIdOf(await c.expect(250, '2.0.0'));
  } finally {
    c.close();
  }
}

describe('kill -9 of cleanup', () => {
  // One instance for the three tests, in order; its directory is ours so the last test can restart it.
  let dir: string;
  let p: Running;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'palisade-crash-'));
    p = await startPalisade({ dir, workers: 1, toml: KEEP_QUEUED });
  });
  after(async () => {
    try {
      assert.equal(await p.stop(), 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('in the middle of DATA: no 250, and no partial file in tmp/, incoming/ or the queue once cleanup is back', async () => {
    const queuedBefore = queuedIds(p.spool);
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      // Enough body that cleanup has begun writing its file (it writes in 256 KiB batches): its reserved file
      // in incoming/, or tmp/ID when none was ready.
      const line = 'd'.repeat(998) + '\r\n';
      c.write('Subject: crash\r\n\r\n' + line.repeat(600));
      await waitFor('a partial file', () => (partialFiles(p.spool).length > 0 ? true : undefined));
      const killed = await killCleanup(p);
      c.write(line.repeat(10) + '.\r\n');
      // 451 4.3.0 once the data is read, or a closed connection: never 250.
      const r = await c.read(15_000);
      if (r !== null) assert.equal(summary(r), '451 4.3.0', `got ${r.lines.join(' | ')}`);
      await killed.fresh();
      await waitFor('the partial file to be removed by recovery', () => (partialFiles(p.spool).length === 0 ? true : undefined));
      assert.deepEqual(queuedIds(p.spool), queuedBefore);
      await p.waitLog((l) => l.event === 'recovered-partial', 10_000); // the new cleanup says what it removed
    } finally {
      c.close();
    }
    // Mail flows again through the new cleanup.
    await cleanupListening(p);
    await sendOne(p.port, 'Subject: after\r\n\r\nok\r\n');
  });

  test('while a session is in DATA: it gets 451 4.3.0 and can retry once cleanup is back', async () => {
    const queuedBefore = queuedIds(p.spool);
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Subject: small\r\n\r\nbody\r\n');
      // Let the begin frame reach cleanup, then kill it before the end of data.
      await new Promise((r) => setTimeout(r, 200));
      const killed = await killCleanup(p);
      await new Promise((r) => setTimeout(r, 100));
      c.write('.\r\n');
      const r = await c.read(15_000);
      assert.ok(r !== null, 'the session is kept');
      assert.equal(summary(r), '451 4.3.0');
      await killed.fresh();
      assert.deepEqual(queuedIds(p.spool), queuedBefore);
      // RFC 5321: a 4xx means "try again": the same session can, once cleanup is back.
      await cleanupListening(p);
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Subject: small\r\n\r\nbody\r\n.\r\n');
      const id = queueIdOf(await c.expect(250, '2.0.0'));
      assert.equal(splitReceived((await readQueued(p.spool, id)).message).rest.toString(), 'Subject: small\r\n\r\nbody\r\n');
    } finally {
      c.close();
    }
  });

  test('after a 250: the message survives it and a full restart', async () => {
    const body = 'Subject: durable\r\n\r\nkeep me\r\n';
    await cleanupListening(p);
    const id = await sendOne(p.port, body);
    const killed = await killCleanup(p);
    await killed.fresh();
    assert.equal(await p.stop(), 0);
    p = await startPalisade({ dir, workers: 1, toml: KEEP_QUEUED });
    const list = await p.cli(['queue', 'list', '--json']);
    assert.equal(list.code, 0, list.stderr);
    const entries = JSON.parse(list.stdout) as { id: string; sender: string; recipients: { address: string }[] }[];
    const entry = entries.find((e) => e.id === id);
    assert.ok(entry !== undefined, `${id} is still queued: ${list.stdout}`);
    assert.equal(entry.sender, 'a@example.com');
    assert.deepEqual(entry.recipients.map((r) => r.address), ['user@mx.test']);
    assert.equal(splitReceived((await readQueued(p.spool, id)).message).rest.toString(), body);
  });

  // Last: it stops the instance.
  test('SIGTERM: an idle session gets 421 4.3.2 at once, a message in DATA is still accepted, and master exits 0', async () => {
    const idle = await openSession(p.port);
    const busy = await openSession(p.port);
    try {
      await busy.ok('MAIL FROM:<a@example.com>');
      await busy.ok('RCPT TO:<user@mx.test>');
      await busy.ok('DATA', 354);
      busy.write('Subject: draining\r\n\r\n');
      p.proc.kill('SIGTERM');
      assert.deepEqual((await idle.readUntilClosed()).map(summary), ['421 4.3.2']);
      busy.write('finished during the drain\r\n.\r\n');
      const id = queueIdOf(await busy.expect(250, '2.0.0'));
      busy.write('NOOP\r\n');
      const rest = (await busy.readUntilClosed()).map(summary);
      assert.equal(rest.at(-1), '421 4.3.2', rest.join(', '));
      assert.equal(await p.exited(), 0);
      assert.ok(queuedIds(p.spool).includes(id), 'the message finished during the drain is queued');
    } finally {
      idle.close();
      busy.close();
    }
  });
});

describe('kill -9 of qmgr after a delivery it has not recorded', () => {
  let peer: SmtpPeer;
  let p: Running;
  before(async () => {
    // The next hop answers the final dot after 1 s: time to freeze qmgr while its job is out.
    peer = await startSmtpPeer({ dataReplyDelayMs: 1000 });
    p = await startPalisade({
      toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n[queue]\nretry_min = "1s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\n`,
    });
  });
  after(async () => {
    const code = await p?.stop();
    await peer?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('the delivery agent marks the recipient delivered in the queue file, so the next qmgr does not deliver again', async () => {
    const c = await openSession(p.port);
    let qid: string;
    try {
      await c.ok('MAIL FROM:<sender@client.test>');
      await c.ok('RCPT TO:<once@remote.test>');
      await c.ok('DATA', 354);
      c.write('Subject: exactly once\r\nMessage-ID: <once@client.test>\r\n\r\nbody\r\n.\r\n');
      qid = queueIdOf(await c.expect(250));
    } finally {
      c.close();
    }
    await peer.waitMessages(1);
    // qmgr cannot take the agent's answer now; the agent gets the peer's 250 and marks the queue file.
    const qmgr = childProcesses(p.proc.pid!).find((x) => / child qmgr$/.test(x.args))!.pid;
    process.kill(qmgr, 'SIGSTOP');
    try {
      const file = join(p.spool, 'active', qid);
      await waitFor('the sent record in the queue file', () => (readFileSync(file, 'utf8').includes('"state":"sent"') ? true : undefined), 10_000);
    } finally {
      process.kill(qmgr, 'SIGKILL');
    }
    // The new qmgr finds the recipient done and removes the message without another delivery.
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid && l.pid !== qmgr, 15_000);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(peer.messages.length, 1, 'delivered exactly once');
    assert.equal(peer.transactions(), 1);
  });
  test('a qmgr killed while a delivery is out: the next one waits for that delivery instead of making a second', async () => {
    const before = peer.messages.length;
    const c = await openSession(p.port);
    let qid: string;
    try {
      await c.ok('MAIL FROM:<sender@client.test>');
      await c.ok('RCPT TO:<inflight@remote.test>');
      await c.ok('DATA', 354);
      c.write('Subject: in flight\r\nMessage-ID: <inflight@client.test>\r\n\r\nbody\r\n.\r\n');
      qid = queueIdOf(await c.expect(250));
    } finally {
      c.close();
    }
    // The peer has the message and answers in 1 s; the new qmgr is up well before that.
    await peer.waitMessages(before + 1);
    const qmgr = childProcesses(p.proc.pid!).find((x) => / child qmgr$/.test(x.args))!.pid;
    process.kill(qmgr, 'SIGKILL');
    const resumed = await p.waitLog((l) => l.event === 'resumed' && l.qid === qid, 15_000);
    assert.notEqual(resumed.pid, qmgr, 'the new qmgr held the message until the old delivery had ended');
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid && l.pid !== qmgr, 15_000);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(peer.messages.length, before + 1, 'delivered exactly once');
  });
});

describe('deliveries a replaced or dead qmgr left running', () => {
  let peer: SmtpPeer;
  let p: Running;
  before(async () => {
    // The next hop takes 3.5 s to answer the final dot (longer than drain_timeout) and has no DSN extension, so
    // a NOTIFY=SUCCESS recipient is ours to report ("relayed"). One message in the active set at a time.
    peer = await startSmtpPeer({ dataReplyDelayMs: 3500, extensions: { dsn: false } });
    // drain_timeout is 2 s (the test config's).
    p = await startPalisade({
      toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n[queue]\nretry_min = "1s"\nscan_interval = "200ms"\nactive_limit = 1\n[delivery]\nworkers = 2\ntimeout = "10s"\n`,
    });
  });
  after(async () => {
    const code = await p?.stop();
    await peer?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  async function send(rcpt: string, tag: string): Promise<string> {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<alice@mx.test>');
      await c.ok(rcpt);
      await c.ok('DATA', 354);
      c.write(`Subject: ${tag}\r\nMessage-ID: <${tag}@client.test>\r\n\r\nbody\r\n.\r\n`);
      return queueIdOf(await c.expect(250));
    } finally {
      c.close();
    }
  }
  const copies = (tag: string) => peer.messages.filter((m) => m.data.toString('latin1').includes(`<${tag}@client.test>`)).length;
  const qmgrPid = () => childProcesses(p.proc.pid!).find((x) => / child qmgr$/.test(x.args))!.pid;

  test('a reload while a delivery outlasts drain_timeout: the new qmgr waits for it, one copy', async () => {
    const qid = await send('RCPT TO:<reload@remote.test>', 'reload-out');
    await waitFor('the peer has the message', () => (copies('reload-out') === 1 ? true : undefined), 10_000);
    const r = await p.cli(['reload']);
    assert.equal(r.code, 0, r.stderr);
    await p.waitLog((l) => l.event === 'resumed' && l.qid === qid, 15_000);
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid, 15_000);
    assert.equal(copies('reload-out'), 1);
  });

  test('a NOTIFY=SUCCESS recipient out when qmgr dies: one copy, and the success DSN still comes', async () => {
    const qid = await send('RCPT TO:<success@remote.test> NOTIFY=SUCCESS', 'success-out');
    await waitFor('the peer has the message', () => (copies('success-out') === 1 ? true : undefined), 10_000);
    const old = qmgrPid();
    process.kill(old, 'SIGKILL');
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid && l.pid !== old, 15_000);
    const [dsn] = await waitMaildir(p.dir, 'alice');
    const parsed = await parseDsn(dsn!);
    assert.equal(parsed.recipients[0]!.action, 'relayed');
    assert.equal(parsed.recipients[0]!['final-recipient'], 'rfc822; success@remote.test');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(copies('success-out'), 1);
  });

  test('a released message waits for room in a full active set, then finishes', async () => {
    const a = await send('RCPT TO:<first@remote.test>', 'full-a');
    await waitFor('the peer has A', () => (copies('full-a') === 1 ? true : undefined), 10_000);
    const b = await send('RCPT TO:<second@remote.test>', 'full-b');
    const old = qmgrPid();
    process.kill(old, 'SIGKILL');
    // The new qmgr fills its one active slot with B while A's old delivery is still out.
    await p.waitLog((l) => l.event === 'resumed' && l.qid === a, 15_000);
    await p.waitLog((l) => l.event === 'removed' && l.qid === b, 15_000);
    await p.waitLog((l) => l.event === 'removed' && l.qid === a, 15_000);
    assert.equal(copies('full-a'), 1);
    assert.equal(copies('full-b'), 1);
  });

  test('hold on a message whose old delivery is still out is refused (try again), not done behind its back', async () => {
    const qid = await send('RCPT TO:<hold@remote.test>', 'hold-out');
    await waitFor('the peer has the message', () => (copies('hold-out') === 1 ? true : undefined), 10_000);
    process.kill(qmgrPid(), 'SIGKILL');
    // Until the new qmgr is up, the CLI says so; then it names the delivery that is out.
    const r = await waitFor('a refusal naming the delivery out', async () => {
      const x = await p.cli(['queue', 'hold', qid]);
      return /delivery out/.test(x.stderr) ? x : undefined;
    }, 10_000);
    assert.equal(r.code, 75, r.stderr);
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid, 15_000);
    assert.equal(copies('hold-out'), 1);
  });
});

describe('kill -9 of the delivery agent mid-delivery', () => {
  let peer: SmtpPeer;
  let p: Running;
  before(async () => {
    // The next hop answers the final dot after 1.5 s: time to kill the agent while it waits. retry_min is an
    // hour, so only the prompt retry of a first attempt lost with its agent can deliver within the test.
    peer = await startSmtpPeer({ dataReplyDelayMs: 1500 });
    p = await startPalisade({
      toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n[queue]\nretry_min = "1h"\nretry_max = "2h"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\ntimeout = "10s"\n`,
    });
  });
  after(async () => {
    const code = await p?.stop();
    await peer?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  const agentPid = () => childProcesses(p.proc.pid!).find((x) => / child delivery$/.test(x.args))?.pid;

  async function send(tag: string): Promise<string> {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<sender@client.test>');
      await c.ok(`RCPT TO:<${tag}@remote.test>`);
      await c.ok('DATA', 354);
      c.write(`Subject: ${tag}\r\nMessage-ID: <${tag}@client.test>\r\n\r\nbody\r\n.\r\n`);
      return queueIdOf(await c.expect(250));
    } finally {
      c.close();
    }
  }

  // Waits for the peer to hold the nth copy (its answer still to come), then kills the agent delivering it.
  async function killAgentAt(n: number): Promise<number> {
    await peer.waitMessages(n);
    const pid = agentPid();
    assert.ok(pid !== undefined, 'master has a delivery agent');
    process.kill(pid, 'SIGKILL');
    return pid;
  }

  test('a first attempt lost with the agent is made again at the next scan, not after retry_min', async () => {
    const qid = await send('lost-once');
    const killed = await killAgentAt(1);
    const deferred = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'deferred', 10_000);
    assert.match(String(deferred.reply), /^delivery agent: /);
    // The restarted agent delivers it: the peer gets a second copy and answers it.
    await p.waitLog((l) => l.event === 'removed' && l.qid === qid, 20_000);
    assert.equal(peer.messages.length, 2, 'the lost attempt and the one that was answered');
    const now = agentPid();
    assert.ok(now !== undefined && now !== killed, 'a new agent delivered it');
  });

  test('a message whose retry loses the agent again backs off as usual (retry_min and up)', async () => {
    const before = peer.messages.length;
    const qid = await send('lost-twice');
    await killAgentAt(before + 1);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'deferred', 10_000);
    // The prompt retry reaches the peer; the agent dies again before the answer.
    await killAgentAt(before + 2);
    let seen = 0;
    const second = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'deferred' && ++seen === 2, 10_000);
    assert.match(String(second.reply), /^delivery agent: /);
    // Now it waits in deferred/ with a next retry at least retry_min ahead.
    const file = join(p.spool, 'deferred', qid);
    const next = await waitFor('the deferred record', () => {
      try {
        const recs = [...readFileSync(file, 'utf8').matchAll(/"next":"([^"]+)"/g)];
        return recs.length >= 2 ? Date.parse(recs[recs.length - 1]![1]!) : undefined;
      } catch {
        return undefined;
      }
    }, 10_000);
    assert.ok(next - Date.now() > 30 * 60_000, `next retry ${new Date(next).toISOString()} is retry_min away or more`);
    // Several scans (200 ms) and the agent's restart later, still no third try.
    await waitFor('a new delivery agent', () => agentPid(), 10_000);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(peer.messages.length, before + 2, 'no third try');
  });
});
