// SPDX-License-Identifier: MIT
// Orphans: deliveries a qmgr left running when it went (a crash, or a stop past its deadline at reload). The
// delivery agents finish them and mark what they delivered in the queue files; before the next qmgr starts,
// master asks each agent which jobs it still runs, and that qmgr gets their messages as `busy` and loads each
// once the last such job has ended or its agent is gone (`released`).

import type { ChildProcess } from 'node:child_process';

/** How long an agent may take to say which jobs it runs before the next qmgr starts without its answer. */
const ANSWER_MS = 2000;

/** The orphaned jobs of every delivery agent, keyed by the agent (any stable object: its supervisor). */
export class Orphans<Agent> {
  // One entry per job (a message can have jobs on several agents, and several on one).
  private readonly jobs = new Map<Agent, string[]>();
  private readonly waiting = new Map<Agent, () => void>();
  private readonly released: (qid: string) => void;

  /** `released` is called once a message has no orphaned job left anywhere. */
  constructor(released: (qid: string) => void) {
    this.released = released;
  }

  /** Messages with orphaned jobs. */
  busy(): string[] {
    return [...new Set([...this.jobs.values()].flat())];
  }

  /** Asks each agent (with its process) for its running jobs; resolves when all answered or ANSWER_MS passed. */
  collect(agents: readonly { agent: Agent; child: ChildProcess | null }[]): Promise<void> {
    return Promise.all(agents.map(({ agent, child }) => new Promise<void>((resolve) => {
      if (child === null || !child.connected) return resolve();
      const timer = setTimeout(done, ANSWER_MS);
      const waiting = this.waiting;
      function done(): void {
        clearTimeout(timer);
        waiting.delete(agent);
        resolve();
      }
      waiting.set(agent, done);
      child.send({ type: 'orphans?' }, (e: Error | null) => e && done());
    }))).then(() => {});
  }

  /** An agent's answer: the jobs it runs for the qmgr that is gone. */
  reported(agent: Agent, qids: readonly string[]): void {
    const mine = this.jobs.get(agent) ?? [];
    this.jobs.set(agent, mine);
    mine.push(...qids);
    this.waiting.get(agent)?.();
  }

  /** One of an agent's orphaned jobs ended. */
  ended(agent: Agent, qid: string): void {
    const mine = this.jobs.get(agent);
    const i = mine?.indexOf(qid) ?? -1;
    if (i < 0) return;
    mine!.splice(i, 1);
    if (![...this.jobs.values()].some((l) => l.includes(qid))) this.released(qid);
  }

  /** An agent died: its jobs have ended one way or the other, and it will not answer. */
  gone(agent: Agent): void {
    for (const qid of [...(this.jobs.get(agent) ?? [])]) this.ended(agent, qid);
    this.jobs.delete(agent);
    this.waiting.get(agent)?.();
  }
}
