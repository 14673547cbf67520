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

  test('at light load one of the two workers takes every session', async () => {
    assert.equal(smtpdPids().length, 2);
    const served = new Set<number>();
    for (let i = 0; i < 12; i++) served.add(await send(i));
    assert.equal(served.size, 1, `sessions went to ${[...served].join(', ')}`);
  });

  test('when the accepting worker is killed, the other takes the next client at once', async () => {
    const first = await send(100);
    process.kill(first, 'SIGKILL');
    const next = await send(101);
    assert.notEqual(next, first);
    // The restarted worker waits idle: the next sessions still go to the one that took over.
    await waitFor('a restarted second worker', () => (smtpdPids().length === 2 && !smtpdPids().includes(first) ? true : undefined));
    for (let i = 102; i < 106; i++) assert.equal(await send(i), next);
  });

  test('when the accepting worker stops (a stuck event loop), another starts accepting and takes the clients', async () => {
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
