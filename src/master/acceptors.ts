// SPDX-License-Identifier: MIT
// Which smtpd workers accept new connections. Every worker holds the listening sockets' handles, but only
// as many accept as the load needs: one while it keeps up, more once each accepting worker's event loop is
// busy most of the time. Workers that all accept on one socket are all woken for every connection and take
// turns with the sessions; at light load that cost 0.13–0.17 ms of CPU per message on a two-CPU machine (each
// worker's code and data cold again at every turn) and a tenth of the one-session rate (bench/RESULTS.md).
// A pure decision: master's SmtpdWorkers acts on it (src/master/workers.ts).

/** The event-loop utilization at which every accepting worker counts as busy: one more starts accepting. */
export const BUSY = 0.8;
/**
 * One accepting worker stops when the others would carry the whole load at most this busy. Two workers
 * sharing a light load report more than one would alone (each finds its code cold: one session, 4 KB, one
 * worker 0.36, two 0.44 together), so this sits closer to BUSY than a half; below BUSY, no change is undone
 * by the same load.
 */
export const QUIET = 0.6;
/** How often a worker reports its event-loop utilization (ms). */
export const LOAD_REPORT_MS = 250;

/** A live worker of the current generation, in index order. */
export interface AcceptorState {
  readonly accepting: boolean;
  /** Event-loop utilization (0–1) over its last report's window, or null before its first report since the last change. */
  readonly load: number | null;
}

/** What to change: the index (into the list given) of a worker to start or to stop accepting. */
export type AcceptChange = { readonly start: number } | { readonly stop: number } | null;

/**
 * One step towards the right number of accepting workers. With none accepting, the first starts. With all
 * accepting workers reported busy (BUSY) another starts; when the accepting ones' load would fit in one
 * worker fewer at QUIET each, the last one stops (never the first: it keeps the sessions of a light load on
 * one process). A change needs a fresh report from every accepting worker (load not null): a worker that just
 * started has not taken its share yet.
 */
export function nextAcceptChange(workers: readonly AcceptorState[]): AcceptChange {
  const accepting: number[] = [];
  const idle: number[] = [];
  workers.forEach((w, i) => (w.accepting ? accepting : idle).push(i));
  if (accepting.length === 0) return idle.length > 0 ? { start: idle[0]! } : null;
  const loads = accepting.map((i) => workers[i]!.load);
  if (loads.some((l) => l === null)) return null;
  const ls = loads as number[];
  if (idle.length > 0 && ls.every((l) => l >= BUSY)) return { start: idle[0]! };
  const total = ls.reduce((a, b) => a + b, 0);
  if (accepting.length > 1 && total <= QUIET * (accepting.length - 1)) return { stop: accepting[accepting.length - 1]! };
  return null;
}
