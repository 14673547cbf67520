// SPDX-License-Identifier: MIT
// Crash loop under load (bounded for CI): 10 sessions send uniquely identified messages for 20 s while a random
// child (smtpd, cleanup, qmgr or a delivery agent) is killed with SIGKILL every 2 s. Every message that got a
// 250 must reach the next hop at least once (duplicates are allowed: a crash may repeat one delivery), and
// nothing may end up in corrupt/.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { childProcesses, startPalisade, waitFor } from '../support/palisade.ts';
import { SmtpClient } from '../support/smtp-client.ts';
import { startSmtpPeer } from '../support/smtp-server.ts';
import { queuedIds, spoolFiles } from '../support/queue.ts';

const RUN_MS = 20_000;
const KILL_EVERY_MS = 2000;
const SENDERS = 10;
// Each sender pauses this long between messages, so the run stays small enough to drain quickly on 2 cores.
const PAUSE_MS = 100;
const ROLES = ['smtpd', 'cleanup', 'qmgr', 'delivery'] as const;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One sender: sessions of messages until `stop()`; adds each Message-ID answered 250 to `acked`. */
async function sender(port: number, n: number, stop: () => boolean, acked: Set<string>, stats: { errors: number }): Promise<void> {
  let seq = 0;
  while (!stop()) {
    let c: SmtpClient | null = null;
    try {
      c = await SmtpClient.connect(port);
      await c.expect(220);
      await c.ok('EHLO client.test');
      while (!stop()) {
        const id = `crash-${n}-${seq++}@client.test`;
        await c.ok('MAIL FROM:<a@example.com>');
        await c.ok(`RCPT TO:<s${n}@remote.test>`);
        await c.ok('DATA', 354);
        c.write(`Message-ID: <${id}>\r\nSubject: ${id}\r\n\r\nsender ${n}\r\n.\r\n`);
        const r = await c.read(15_000);
        if (r === null) throw new Error('closed after DATA');
        if (r.code === 250) acked.add(id);
        else stats.errors++; // 451 4.3.0 when cleanup died mid-message: not acknowledged, so not owed
        await sleep(PAUSE_MS);
      }
      await c.cmd('QUIT').catch(() => undefined);
    } catch {
      stats.errors++; // a killed smtpd resets its sessions; the client tries again, as a real one would
      await sleep(100);
    } finally {
      c?.close();
    }
  }
}

/** The Message-ID of a message as the peer received it. */
function messageId(data: Buffer): string | undefined {
  return /^Message-ID: <([^>]+)>\r$/m.exec(data.toString('latin1'))?.[1];
}

test('SIGKILL of a random child every 2 s for 20 s under 10 sessions: every 250-acked message arrives, nothing is corrupt', { timeout: 90_000 }, async (t) => {
  const peer = await startSmtpPeer();
  const p = await startPalisade({
    workers: 2,
    toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n` +
      '[queue]\nretry_min = "1s"\nretry_max = "2s"\nscan_interval = "500ms"\n' +
      '[delivery]\nworkers = 2\nconnect_timeout = "2s"\ntimeout = "5s"\n',
  });
  let stopping = false;
  const acked = new Set<string>();
  const stats = { errors: 0 };
  const kills: Record<string, number> = { smtpd: 0, cleanup: 0, qmgr: 0, delivery: 0 };
  try {
    const senders = Array.from({ length: SENDERS }, (_, n) => sender(p.port, n, () => stopping, acked, stats));
    const end = Date.now() + RUN_MS;
    // Roles in random order, each once per round of four, so a 10-kill run hits every role at least twice.
    let bag: string[] = [];
    while (Date.now() < end) {
      await sleep(KILL_EVERY_MS);
      if (bag.length === 0) bag = [...ROLES].sort(() => Math.random() - 0.5);
      const role = bag.shift()!;
      const victims = childProcesses(p.proc.pid!).filter((c) => c.args.endsWith(` child ${role}`));
      const victim = victims[Math.floor(Math.random() * victims.length)];
      if (victim === undefined) continue; // that role is between restarts right now
      try {
        process.kill(victim.pid, 'SIGKILL');
        kills[role]!++;
      } catch { /* it died on its own meanwhile */ }
    }
    stopping = true;
    await Promise.all(senders);

    // Drain: every acknowledged message delivered, and nothing left in the queue.
    const arrived = () => {
      const count = new Map<string, number>();
      for (const m of peer.messages) {
        const id = messageId(m.data);
        if (id !== undefined) count.set(id, (count.get(id) ?? 0) + 1);
      }
      return count;
    };
    await waitFor('the queue to drain and every acked message to arrive', () => {
      const got = arrived();
      return queuedIds(p.spool).length === 0 && [...acked].every((id) => got.has(id)) ? true : undefined;
    }, 45_000).catch((e: Error) => {
      const got = arrived();
      const missing = [...acked].filter((id) => !got.has(id));
      throw new Error(`${e.message}: ${missing.length} acked message(s) missing (e.g. ${missing.slice(0, 5).join(', ')}); queued: ${queuedIds(p.spool).length}`);
    });
    const got = arrived();
    const duplicates = [...got.values()].filter((n) => n > 1).length;
    const totalKills = Object.values(kills).reduce((a, b) => a + b, 0);
    t.diagnostic(`acked ${acked.size}, arrived ${got.size} distinct / ${peer.messages.length} total, duplicates ${duplicates}, ` +
      `client-side failures ${stats.errors}, kills ${totalKills} ${JSON.stringify(kills)}`);
    assert.ok(acked.size > 0, 'some messages were accepted');
    assert.ok(totalKills >= 5, `children were killed (${totalKills})`);
    for (const r of ROLES) assert.ok(kills[r]! >= 1, `${r} was killed at least once`);
    assert.deepEqual(spoolFiles(p.spool, 'corrupt'), []);
    assert.ok(!p.logs().some((l) => l.event === 'corrupt'), 'nothing logged as corrupt');
    // Unacknowledged messages may arrive too (a kill between commit and the 250), never unknown ones.
    for (const id of got.keys()) assert.match(id, /^crash-\d+-\d+@client\.test$/);
    // Palisade is whole again: every role is running and mail is accepted.
    await waitFor('every role running', () => {
      const args = childProcesses(p.proc.pid!).map((c) => c.args);
      return ROLES.every((r) => args.some((a) => a.endsWith(` child ${r}`))) ? true : undefined;
    }, 15_000);
  } finally {
    stopping = true;
    await p.stop();
    await peer.close();
  }
});
