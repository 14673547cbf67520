// SPDX-License-Identifier: MIT
// log: structured JSON lines (pino) on stdout; every line names its component, and its qid where there is one.
// Must not: log message bodies, passwords or keys.

import { pino, type Logger } from 'pino';

export type { Logger };

/** Creates the process logger for `component` at `level`; children add `qid` with logger.child({ qid }). */
export function createLogger(component: string, level = 'info'): Logger {
  return pino({
    level,
    base: { component, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}
