// SPDX-License-Identifier: MIT
// Crash safety: kill -9 of the cleanup process mid-message never yields a 250 or a partial queue file; a
// message acknowledged with 250 survives kill -9 of cleanup and a full restart.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import { childProcesses, startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf, summary } from '../support/smtp-client.ts';
import { KEEP_QUEUED, queuedIds, readQueued, splitReceived, spoolFiles } from '../support/queue.ts';

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

test('kill -9 of cleanup in the middle of DATA: no 250, and no partial file in tmp/ or the queue once cleanup is back', async () => {
  const p = await startPalisade({ toml: KEEP_QUEUED });
  try {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      // Enough body that cleanup has opened its tmp/ file (it writes in 256 KiB batches).
      const line = 'd'.repeat(998) + '\r\n';
      c.write('Subject: crash\r\n\r\n' + line.repeat(600));
      await waitFor('a partial file in tmp/', () => (spoolFiles(p.spool, 'tmp').length > 0 ? true : undefined));
      const killed = await killCleanup(p);
      c.write(line.repeat(10) + '.\r\n');
      const r = await c.read(15_000);
      if (r !== null) assert.equal(summary(r), '451 4.3.0', `got ${r.lines.join(' | ')}`);
      await killed.fresh();
      await waitFor('tmp/ to be emptied by recovery', () => (spoolFiles(p.spool, 'tmp').length === 0 ? true : undefined));
      assert.deepEqual(queuedIds(p.spool), []);
      assert.ok(p.logs().some((l) => l.event === 'recovered-partial'), 'the new cleanup logged the partial file it removed');
    } finally {
      c.close();
    }
    // Mail flows again through the new cleanup.
    await cleanupListening(p);
    const c2 = await openSession(p.port);
    try {
      await c2.ok('MAIL FROM:<a@example.com>');
      await c2.ok('RCPT TO:<user@mx.test>');
      await c2.ok('DATA', 354);
      c2.write('Subject: after\r\n\r\nok\r\n.\r\n');
      await c2.expect(250, '2.0.0');
    } finally {
      c2.close();
    }
  } finally {
    assert.equal(await p.stop(), 0);
  }
});

test('a session still in its transaction when cleanup dies gets 451 4.3.0 for DATA and can retry', async () => {
  const p = await startPalisade({ toml: KEEP_QUEUED });
  try {
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
      assert.deepEqual(queuedIds(p.spool), []);
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
  } finally {
    assert.equal(await p.stop(), 0);
  }
});

test('a message acknowledged with 250 survives kill -9 of cleanup and a full restart', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-crash-'));
  try {
    let id: string;
    const body = 'Subject: durable\r\n\r\nkeep me\r\n';
    const p = await startPalisade({ dir, toml: KEEP_QUEUED });
    try {
      const c = await openSession(p.port);
      try {
        await c.ok('MAIL FROM:<a@example.com>');
        await c.ok('RCPT TO:<user@mx.test>');
        await c.ok('DATA', 354);
        c.write(body + '.\r\n');
        id = queueIdOf(await c.expect(250, '2.0.0'));
      } finally {
        c.close();
      }
      const killed = await killCleanup(p);
      await killed.fresh();
    } finally {
      assert.equal(await p.stop(), 0);
    }
    const p2 = await startPalisade({ dir, toml: KEEP_QUEUED });
    try {
      const list = await p2.cli(['queue', 'list', '--json']);
      assert.equal(list.code, 0, list.stderr);
      const entries = JSON.parse(list.stdout) as { id: string; sender: string; recipients: { address: string }[] }[];
      assert.deepEqual(entries.map((e) => e.id), [id]);
      assert.equal(entries[0]!.sender, 'a@example.com');
      assert.deepEqual(entries[0]!.recipients.map((r) => r.address), ['user@mx.test']);
      assert.equal(splitReceived((await readQueued(p2.spool, id)).message).rest.toString(), body);
    } finally {
      assert.equal(await p2.stop(), 0);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
