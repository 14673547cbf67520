// SPDX-License-Identifier: MIT
// Crash safety under load: smtp-source sends 2,000 messages into Palisade, which relays them to smtp-sink,
// while the test kill -9s the queue manager and the delivery agents again and again. Master restarts them;
// every message acknowledged with 250 still reaches the sink (counted by distinct Message-Id), nothing stays
// in the queue. A kill may repeat a delivery (the agent finished but qmgr never recorded it): duplicates are
// allowed by the queue's contract ("repeats at most one delivery") and reported, losses are not.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startPalisade } from '../../support/palisade.ts';
import { spoolFiles } from '../../support/queue.ts';
import { childrenOf, signal, sleep, waitFor } from '../../support/net.ts';
import { listQueued, removeDir, requirePeers, runPeer, skipWithoutPeers, tempDir } from '../../support/peers.ts';
import { SMTP_SINK, startSmtpSink } from '../../support/smtp-sink.ts';

const SMTP_SOURCE = '/usr/sbin/smtp-source';
const skip = skipWithoutPeers(SMTP_SOURCE, SMTP_SINK);
const MESSAGES = Number(process.env.E2E_CRASH_MESSAGES ?? 2000);
const SESSIONS = 20;
const LENGTH = 1000;
// Kills, alternating a delivery agent and qmgr, at least this far apart.
const KILLS = Number(process.env.E2E_CRASH_KILLS ?? 8);
// Deliveries logged since the previous kill before the next one: the window has grown, agents are busy.
const FLOWING = 20;
// Fewer kills per role than this (the run finished first) would not prove much.
const MIN_KILLS = 2;
const KILL_EVERY_MS = Number(process.env.E2E_CRASH_KILL_EVERY_MS ?? 300);

/**
 * The body smtp-source generates for `-l length` (postfix smtpstone/smtp-source.c), in smtp-sink's LF form:
 * `length` bytes of "X" cut into 80-byte lines whose first character cycles 1..9,0, the rest as a last line.
 */
function sourceBodyLf(length: number): string {
  const b = Buffer.alloc(length, 'X');
  for (let i = 80; i < length; i += 80) {
    b[i - 80] = '0123456789'.charCodeAt((i / 80) % 10);
    b[i - 2] = 0x0d;
    b[i - 1] = 0x0a;
  }
  return (b.toString('latin1') + '\r\n').replace(/\r\n/g, '\n');
}

/** Messages in incoming/, active/, deferred/ and hold/ (cleanup's reserved files in incoming/ are not messages). */
function queuedCount(spool: string): number {
  return (['incoming', 'active', 'deferred', 'hold'] as const).reduce((n, s) => n + spoolFiles(spool, s).length, 0);
}

test(`crash safety: ${MESSAGES} messages through Palisade to smtp-sink while qmgr and delivery agents are killed with SIGKILL`, { skip, timeout: 120_000 }, async (t) => {
  requirePeers(SMTP_SOURCE, SMTP_SINK);
  const began = Date.now();
  const sink = await startSmtpSink();
  const dir = tempDir('palisade-e2e-crash-');
  try {
    const p = await startPalisade({
      dir,
      smtp: 'max_sessions = 200\nmax_sessions_per_ip = 0\n',
      toml: `[transport]\n"sink.test" = "smtp:[127.0.0.1]:${sink.port}"\n` +
        '[queue]\nretry_min = "1s"\nretry_max = "2s"\nscan_interval = "500ms"\n' +
        '[delivery]\nworkers = 2\n',
    });
    try {
      const master = p.proc.pid!;
      let sourceDone = false;
      const source = runPeer(SMTP_SOURCE, [
        '-c', '-s', String(SESSIONS), '-m', String(MESSAGES), '-l', String(LENGTH),
        '-M', 'client.test', '-f', 'src@example.com', '-t', 'rcpt@sink.test', `127.0.0.1:${p.port}`,
      ], { timeoutMs: 90_000 }).finally(() => (sourceDone = true));
      // Handled here too, so a failure in the kill loop below never leaves an unhandled rejection behind.
      source.catch(() => undefined);

      // kill -9 the qmgr child and the delivery agents (found among master's children), in turns. Before each
      // kill, deliveries must be flowing again (FLOWING fresh "sent" lines), so every victim has work in flight.
      const kills: { role: string; pid: number; during: 'source' | 'drain'; at: number }[] = [];
      let seen = 0;
      for (let i = 0; i < KILLS; i++) {
        const role = i % 2 === 0 ? 'delivery' : 'qmgr';
        const from = seen;
        const flowing = await waitFor('deliveries to flow', () => {
          const logs = p.logs();
          let sent = 0;
          for (let k = from; k < logs.length; k++) if (logs[k]!.event === 'delivery' && logs[k]!.status === 'sent') sent++;
          if (sent >= FLOWING) return true;
          // All done already (a fast machine): nothing left to kill into.
          if (sourceDone && queuedCount(p.spool) === 0) return false;
          return undefined;
        }, 30_000);
        if (!flowing) break;
        const victim = await waitFor(`a running ${role} child`, () => {
          const c = childrenOf(master).filter((c) => c.args.endsWith(`child ${role}`) && !kills.some((k) => k.pid === c.pid));
          return c.length > 0 ? c[Math.floor(Math.random() * c.length)] : undefined;
        }, 20_000);
        signal(victim.pid, 'SIGKILL');
        seen = p.logs().length;
        kills.push({ role, pid: victim.pid, during: sourceDone ? 'drain' : 'source', at: Date.now() - began });
        await sleep(KILL_EVERY_MS);
      }

      const run = await source;
      assert.equal(run.code, 0, `smtp-source failed (${run.code}): ${run.stderr.slice(-800)}`);
      // -c prints "\r1\r2...\rN\n": N is the number of DATA commands answered with 250.
      const acked = Number(run.stdout.split(/[\r\n]+/).filter((s) => /^\d+$/.test(s)).at(-1) ?? 0);
      assert.equal(acked, MESSAGES, 'smtpd and cleanup were never killed: every message is acknowledged');

      // Drain: the queue empties and the sink holds every acknowledged Message-Id.
      const incomplete: string[] = [];
      let dumps = 0;
      const drained = await waitFor('the queue to drain into the sink', async () => {
        if (sink.count() < acked) return undefined;
        if (queuedCount(p.spool) > 0) return undefined;
        return true;
      }, Math.max(5_000, 105_000 - (Date.now() - began))).catch((e: Error) => e);
      const body = sourceBodyLf(LENGTH);
      const distinct = new Set<string>();
      for (const d of await sink.settled(0)) {
        dumps++;
        const id = /^Message-Id: (<[^>\n]+>)$/m.exec(d.message)?.[1];
        if (id === undefined || !d.message.endsWith('\n\n' + body) || !/^Received: from client\.test \(\[127\.0\.0\.1\]\)\n\tby mx\.test \(Palisade\) with SMTP id [0-9A-Z]{16}\n/.test(d.message)) {
          incomplete.push(d.file);
          continue;
        }
        distinct.add(id);
      }
      const remaining = await listQueued(p.spool);
      const corrupt = readdirSync(join(p.spool, 'corrupt'));
      const exits = p.logs().filter((l) => l.event === 'child-exit');
      const outcomes = p.logs().filter((l) => l.event === 'delivery');
      const bounced = outcomes.filter((l) => l.status === 'bounced');
      const unexpected = exits.filter((l) => !kills.some((k) => k.pid === l.pid));
      t.diagnostic(`kills: ${kills.map((k) => `${k.role}@${k.at}ms(${k.during})`).join(' ')}`);
      t.diagnostic(`acknowledged ${acked}, dumps ${dumps}, distinct Message-Ids ${distinct.size}, duplicates ${dumps - distinct.size - incomplete.length}, elapsed ${Date.now() - began} ms`);
      const lost = outcomes.filter((l) => l.status === 'deferred' && String(l.reply).startsWith('delivery agent:'));
      t.diagnostic(`delivery attempts logged: ${outcomes.filter((l) => l.status === 'sent').length} sent, ${outcomes.filter((l) => l.status === 'deferred').length} deferred (${lost.length} lost with a killed agent), ${bounced.length} bounced`);
      t.diagnostic(`child exits seen by master: ${exits.map((l) => `${String(l.role)}/${String(l.pid)}:${String(l.signal ?? l.code)}`).join(' ')}`);
      assert.ok(kills.filter((k) => k.role === 'qmgr').length >= MIN_KILLS && kills.filter((k) => k.role === 'delivery').length >= MIN_KILLS, `at least ${MIN_KILLS} kills of each role`);
      assert.ok(kills.some((k) => k.during === 'source'), 'at least one kill hit while smtp-source was still sending');
      assert.ok(lost.length > 0, 'a killed delivery agent had jobs in flight (qmgr deferred them as lost)');
      assert.deepEqual(unexpected, [], 'no child died except those the test killed');
      assert.deepEqual(bounced, [], 'a killed process never turns into a bounce');
      assert.deepEqual(incomplete, [], 'every dump is a complete message');
      assert.equal(distinct.size, acked, `every acknowledged message reached the sink (missing ${acked - distinct.size})`);
      assert.deepEqual(remaining.map((e) => e.id), [], 'nothing stays in the queue');
      assert.deepEqual(corrupt, [], 'no queue file was marked corrupt');
      assert.equal(drained, true, 'drained in time');
    } finally {
      assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    }
  } finally {
    await sink.stop();
    removeDir(dir);
  }
});
