// SPDX-License-Identifier: MIT
// The operator's queue commands as qmgr runs them (palisade queue hold|release|delete|requeue|flush, status):
// a message being delivered finishes its round first; one whose delivery the previous qmgr left running is
// not touched until that delivery has ended.

import type { Logger } from '../log/index.ts';
import type { MessageState, QueueStore } from '../queue/index.ts';
import type { Destinations } from './destinations.ts';

/** Control commands (from master's control socket). */
export type QmgrCommand = { cmd: 'hold' | 'release' | 'delete' | 'requeue'; id: string } | { cmd: 'flush' } | { cmd: 'status' };

/** What a command answers (the CLI prints it; `code` 1 = no such message, else try again). */
export type ControlAnswer = { ok: boolean; error?: string; code?: number; [k: string]: unknown };

/** The parts of qmgr the commands act on. */
export interface ControlContext {
  readonly log: Logger;
  readonly store: QueueStore;
  readonly dests: Destinations;
  /** Messages in the active set. */
  readonly active: ReadonlyMap<string, { pendingAction: 'hold' | 'delete' | null; readonly inFlight: number }>;
  /** Deferred messages not in memory: id → next retry (ms). */
  readonly deferred: Map<string, number>;
  /** Messages a delivery of the previous qmgr still has out. */
  readonly busy: ReadonlySet<string>;
  scan(): Promise<void>;
  load(id: string, from: MessageState): Promise<boolean>;
  /** Ends the round of an active message with nothing in flight (its pending action applies). */
  finish(id: string): Promise<void>;
}

/** The command handler over `ctx`. */
export function createControl(ctx: ControlContext): (c: QmgrCommand) => Promise<ControlAnswer> {
  const { log, store, dests, active, deferred, busy, scan, load, finish } = ctx;
  return async function control(c: QmgrCommand): Promise<ControlAnswer> {
    if (c.cmd === 'status') return { ok: true, active: active.size, deferred: deferred.size, in_flight: dests.inFlight, waiting: dests.waiting };
    if (c.cmd === 'flush') {
      // As Postfix's flush: destinations marked dead are tried again too.
      dests.revive();
      for (const id of deferred.keys()) deferred.set(id, 0);
      void scan();
      return { ok: true, flushed: deferred.size };
    }
    const id = c.id;
    const where = await store.locate(id);
    if (where === null) return { ok: false, code: 1, error: `no message ${id} in the queue` };
    // Its file is still being marked by a delivery the previous qmgr started: moving or removing it now could
    // have it delivered twice or lose the mark.
    if (busy.has(id)) return { ok: false, code: 75, error: `message ${id} has a delivery out that the previous queue manager started; try again shortly` };
    const m = active.get(id);
    switch (c.cmd) {
      case 'hold':
        if (where === 'hold') return { ok: true };
        if (m) {
          m.pendingAction = 'hold';
          return { ok: true, note: 'held after the deliveries in flight' };
        }
        deferred.delete(id);
        await store.move(id, where, 'hold');
        log.info({ event: 'held', qid: id });
        return { ok: true };
      case 'release': {
        if (where !== 'hold') return { ok: false, code: 1, error: `message ${id} is not on hold` };
        // Not taken (the active set is full): it leaves hold anyway and waits in deferred/, due now. (A scan's
        // expiry may have taken it meanwhile: then there is nothing left to move.)
        let waits = false;
        if (!(await load(id, 'hold'))) {
          try {
            await store.move(id, 'hold', 'deferred');
            deferred.set(id, 0);
            waits = true;
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          }
        }
        log.info({ event: 'released', qid: id, ...(waits ? { note: 'waits for room in the active set' } : {}) });
        return { ok: true, ...(waits ? { note: 'waits for room in the active set' } : {}) };
      }
      case 'delete':
        if (m) {
          m.pendingAction = 'delete';
          if (m.inFlight === 0) await finish(id);
          return { ok: true };
        }
        deferred.delete(id);
        await store.remove(where, id);
        log.info({ event: 'deleted', qid: id });
        return { ok: true };
      case 'requeue':
        if (where === 'deferred') {
          // Due now: taken at once, or by the next scan when the active set has room; a dead destination is
          // tried again.
          dests.revive();
          deferred.set(id, 0);
          await load(id, 'deferred');
        }
        return { ok: true };
    }
  };
}
