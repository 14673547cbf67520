// SPDX-License-Identifier: MIT
// Which smtpd workers accept new connections (src/master/acceptors.ts): at light load one takes every
// session; when it dies or stops (its event loop stuck), another takes the next client, and no client waits
// for it to come back.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { childProcesses, startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { queueIdOf, sendMessage } from '../support/smtp-client.ts';
import { KEEP_QUEUED } from '../support/queue.ts';

describe('accepting smtpd workers', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 2, toml: KEEP_QUEUED });
  });
  after(async () => {
    assert.equal(await p.stop(), 0);
  });

  const smtpdPids = () => childProcesses(p.proc.pid!).filter((c) => / child smtpd$/.test(c.args)).map((c) => c.pid);
  // The worker (pid) that logged the connect of the session that queued `qid`.
  const workerOf = async (qid: string): Promise<number> => {
    const queued = await p.waitLog((l) => l.event === 'queued' && l.qid === qid);
    return queued.pid as number;
  };
  const send = async (n: number) => {
    const r = await sendMessage(p.port, 'a@example.com', ['b@example.net'], `Subject: ${n}\r\n\r\nbody ${n}\r\n`);
    assert.equal(r.code, 250, `message ${n}`);
    return workerOf(queueIdOf(r));
  };

  // How many workers accept now, by master's log (1 until it logs a change).
  const accepting = (): number => {
    const changes = p.logs().filter((l) => l.event === 'acceptors');
    return changes.length === 0 ? 1 : (changes[changes.length - 1]!.accepting as number);
  };
  // Master starts a second acceptor when the first has been busy for a second: on a machine loaded by other
  // tests that can happen even at this light load. Only such a start (its logged loads all busy) excuses a
  // split: the check then waits for one acceptor again and repeats.
  const oneWorker = async (what: string, sessions: () => Promise<Set<number>>): Promise<number> => {
    for (let attempt = 1; ; attempt++) {
      const from = p.logs().length;
      const served = await sessions();
      const starts = p.logs().slice(from).filter((l) => l.event === 'acceptors' && (l.accepting as number) > 1);
      const excused = starts.length > 0 && starts.every((l) => (l.loads as (number | null)[]).length > 0 && (l.loads as (number | null)[]).every((x) => x !== null && x >= 0.8));
      if (served.size === 1 || attempt === 3 || !excused) {
        assert.equal(served.size, 1, `${what}: sessions went to ${[...served].join(', ')}; acceptors ${JSON.stringify(p.logs().filter((l) => l.event === 'acceptors'))}`);
        return [...served][0]!;
      }
      await waitFor('one acceptor again', () => (accepting() === 1 ? true : undefined), 20_000);
    }
  };

  test('at light load one of the two workers takes every session', async () => {
    assert.equal(smtpdPids().length, 2);
    await oneWorker('12 sessions', async () => {
      const served = new Set<number>();
      for (let i = 0; i < 12; i++) served.add(await send(i));
      return served;
    });
  });

  test('when the accepting worker is killed, the other takes the next client at once', async () => {
    const first = await send(100);
    const killedAt = p.logs().length;
    process.kill(first, 'SIGKILL');
    const next = await send(101);
    assert.notEqual(next, first);
    // The restarted worker waits idle: the next sessions still go to the one that took over.
    await waitFor('a restarted second worker', () => (smtpdPids().length === 2 && !smtpdPids().includes(first) ? true : undefined));
    const after = await oneWorker('after the restart', async () => {
      const served = new Set<number>();
      for (let i = 102; i < 106; i++) served.add(await send(i));
      return served;
    });
    // (Unless a busy machine made master start a second acceptor meanwhile, and stop the higher one.)
    if (!p.logs().slice(killedAt).some((l) => l.event === 'acceptors' && (l.accepting as number) > 1)) assert.equal(after, next);
  });

  test('when the accepting worker stops (a stuck event loop), another starts accepting and takes the clients', async () => {
    await waitFor('one acceptor', () => (accepting() === 1 ? true : undefined), 20_000);
    const stuck = await send(200);
    const before = p.logs().length;
    process.kill(stuck, 'SIGSTOP');
    try {
      const other = await send(201);
      assert.notEqual(other, stuck);
      // Master started the other one accepting (the stopped one never closed its copy).
      assert.ok(p.logs().slice(before).some((l) => l.event === 'acceptors' && l.accepting === 2), 'a second worker accepts');
    } finally {
      process.kill(stuck, 'SIGCONT');
    }
  });
});
