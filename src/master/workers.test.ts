// SPDX-License-Identifier: MIT
// SmtpdWorkers' choice of accepting workers, driven through fake worker processes that speak the worker's
// side of the protocol (src/main.ts runSmtpd) and a clock the test moves.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import { SmtpdWorkers, type Supervisor } from './workers.ts';
import type { ChildSpec } from './children.ts';
import { Anvil } from '../policy/index.ts';
import { createLogger } from '../log/index.ts';
import type { Config } from '../config/index.ts';

type Msg = { type: string; accept?: boolean; index?: number };

/** A worker process as master sees it: records what master sends, answers 'listen' with 'listening'. */
class FakeChild extends EventEmitter {
  connected = true;
  exitCode: number | null = null;
  signalCode: string | null = null;
  readonly sent: Msg[] = [];
  // Answers 'listening' later (a worker slow to start), until released.
  slow: (() => void)[] | null = null;
  send(m: Msg): boolean {
    this.sent.push(m);
    if (m.type === 'listen') {
      const answer = () => this.emit('message', { type: 'listening', display: 'x' });
      if (this.slow !== null) this.slow.push(answer);
      else queueMicrotask(answer);
    }
    return true;
  }
  types(): string[] {
    return this.sent.map((m) => m.type);
  }
}

class FakeSupervisor implements Supervisor {
  child: ChildProcess | null = null;
  readonly spec: ChildSpec;
  slowNext = false;
  constructor(spec: ChildSpec) {
    this.spec = spec;
  }
  get fake(): FakeChild {
    return this.child as unknown as FakeChild;
  }
  start(): void {
    const c = new FakeChild();
    if (this.slowNext) c.slow = [];
    this.child = c as unknown as ChildProcess;
    this.spec.onSpawn(this.child);
  }
  stop(): Promise<void> {
    return Promise.resolve();
  }
  /** The process dies and is started again at once. */
  die(): void {
    const c = this.fake;
    c.connected = false;
    c.exitCode = 1;
    this.spec.onExit?.(this.child!, 1, null);
    this.start();
  }
  load(load: number): void {
    this.fake.emit('message', { type: 'load', load });
  }
}

const tick = () => new Promise((r) => setImmediate(r));

function setup(count: number, opts: { slow?: number[] } = {}) {
  let clock = 10_000;
  const sups: FakeSupervisor[] = [];
  const workers = new SmtpdWorkers({
    log: createLogger('test', 'silent'),
    anvil: new Anvil({ maxSessions: 200, maxSessionsPerIp: 0, connectionRatePerIp: 0, messageRatePerIp: 0, recipientRatePerIp: 0, stressAt: 0.9 }),
    entry: 'unused',
    grants: () => ({ read: [], write: [] }),
    ids: null,
    cleanupPath: 'unused',
    handles: [{ name: 'smtp', display: '127.0.0.1:25', handle: {} }],
    flags: { stress: false, diskLow: false },
    stopping: () => false,
    listenFailed: () => {},
    supervise: (spec) => {
      const s = new FakeSupervisor(spec);
      s.slowNext = (opts.slow ?? []).includes(spec.index);
      sups.push(s);
      return s;
    },
    now: () => clock,
  }, count);
  return { workers, sups, advance: (ms: number) => (clock += ms) };
}

const config = {} as Config;
// Whether master last told this worker to accept (its start-up 'listen', then 'accept' / 'pause').
const accepts = (s: FakeSupervisor): boolean => {
  let on = false;
  for (const m of s.fake.sent) {
    if (m.type === 'listen') on = m.accept !== false;
    else if (m.type === 'accept') on = true;
    else if (m.type === 'pause') on = false;
  }
  return on;
};

describe('SmtpdWorkers: which workers accept', () => {
  test('at start only the first worker accepts; the others get the handles and close them', async () => {
    const { workers, sups } = setup(3);
    await workers.start(config);
    assert.deepEqual(sups.map(accepts), [true, false, false]);
    await workers.stop(0);
  });

  test('a worker that is ready first while the first still listens is not made an acceptor', async () => {
    const { workers, sups } = setup(2, { slow: [0] });
    const started = workers.start(config);
    await tick();
    // Worker 1 is ready, worker 0 not yet: nobody may be promoted meanwhile.
    assert.deepEqual(sups[1]!.fake.types().filter((t) => t === 'accept'), []);
    for (const a of sups[0]!.fake.slow!) a();
    await started;
    assert.deepEqual(sups.map(accepts), [true, false]);
    await workers.stop(0);
  });

  test('a second acceptor starts only after the first has been busy for a second, and stops after 2 s of low load', async () => {
    const { workers, sups, advance } = setup(2);
    await workers.start(config);
    const [a, b] = sups as [FakeSupervisor, FakeSupervisor];
    advance(300);
    a.load(0.95);
    assert.equal(accepts(b), false, 'one busy report is not enough');
    advance(250);
    a.load(0.4);
    advance(250);
    a.load(0.95);
    advance(800);
    a.load(0.95);
    assert.equal(accepts(b), false, 'busy again for 0.8 s only');
    advance(250);
    a.load(0.95);
    assert.equal(accepts(b), true, 'busy for a second');
    // Reports measured before the change do not count.
    advance(100);
    a.load(0.1);
    b.load(0.1);
    advance(300);
    a.load(0.1);
    b.load(0.1);
    assert.equal(accepts(b), true, 'low load, but not for 2 s yet');
    for (let i = 0; i < 7; i++) {
      advance(250);
      a.load(0.1);
      b.load(0.1);
    }
    assert.equal(accepts(b), true, 'low load for 1.75 s');
    for (let i = 0; i < 2; i++) {
      advance(250);
      a.load(0.1);
      b.load(0.1);
    }
    assert.equal(accepts(b), false, 'stopped after 2 s of low load');
    assert.equal(accepts(a), true, 'the first one stays');
    await workers.stop(0);
  });

  test('when the accepting worker dies, the idle one accepts at once and the restarted one waits', async () => {
    const { workers, sups } = setup(2);
    await workers.start(config);
    const [a, b] = sups as [FakeSupervisor, FakeSupervisor];
    a.die();
    assert.equal(accepts(b), true);
    await tick();
    assert.equal(accepts(a), false, 'the restarted worker comes back idle');
    await workers.stop(0);
  });

  test('a reload starts the new generation with as many acceptors as the old one had', async () => {
    const { workers, sups, advance } = setup(2);
    await workers.start(config);
    const [a] = sups as [FakeSupervisor];
    advance(300);
    a.load(0.95);
    advance(1100);
    a.load(0.95);
    assert.equal(accepts(sups[1]!), true);
    await workers.replace(config, 1000, 1000);
    assert.equal(sups.length, 4);
    assert.deepEqual(sups.slice(2).map(accepts), [true, true]);
    await workers.stop(0);
  });
});
