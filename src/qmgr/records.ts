// SPDX-License-Identifier: MIT
// What a queue file's state records say when qmgr loads it: each recipient's record (recipientRecords: the
// last, a sent one final), whether a delay DSN went out, and how many rounds tried a delivery (the backoff).

import { recipientRecords, type StateRecord } from '../queue/index.ts';

/** The state a message resumes with. */
export interface LoadedRecords {
  readonly last: Map<number, StateRecord>;
  readonly warned: boolean;
  readonly attempts: number;
}

/**
 * Reads the records in order. Deferred records carry the rounds that tried a delivery so far (a round a dead
 * destination deferred at once is none); in files from before that field, rounds are counted: one retry time
 * per deferred round, shared by its recipients (counting records would double the backoff).
 */
export function readRecords(records: readonly StateRecord[]): LoadedRecords {
  let warned = false;
  const rounds = new Set<string>();
  let attempts = -1;
  for (const r of records) {
    if ((r as { warned?: boolean }).warned === true) warned = true;
    else if (typeof r.rcpt === 'number') {
      if (r.state === 'deferred' && r.next) rounds.add(r.next);
      if (r.state === 'deferred' && typeof r.attempts === 'number') attempts = Math.max(attempts, r.attempts);
    }
  }
  return { last: recipientRecords(records), warned, attempts: attempts >= 0 ? attempts : rounds.size };
}
