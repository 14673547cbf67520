// SPDX-License-Identifier: MIT
// log: structured JSON lines (pino) on stdout; every line names its component, and its qid where there is one.
// Must not: log message bodies, passwords or keys.

import { writeSync } from 'node:fs';
import { pino, type Logger } from 'pino';

export type { Logger };

/** How a logger writes. */
export interface LogOptions {
  /**
   * Lines are gathered for up to BATCH_MS (or BATCH_BYTES) and written together, one write(2) for many lines
   * instead of one each: what the per-message processes use. A process killed with SIGKILL loses at most
   * that much of its log; every other exit writes what is pending.
   */
  readonly batched?: boolean;
}

/** Creates the process logger for `component` at `level`; children add `qid` with logger.child({ qid }). */
export function createLogger(component: string, level = 'info', opts: LogOptions = {}): Logger {
  const options = {
    level,
    base: { component, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return opts.batched === true ? pino(options, stdoutBatch()) : pino(options);
}

const BATCH_MS = 10;
const BATCH_BYTES = 16 * 1024;

let batch: LineBatch | null = null;

// One batch per process, shared by its loggers, written out on exit.
function stdoutBatch(): LineBatch {
  if (batch === null) {
    const b = new LineBatch(1);
    process.on('exit', () => b.flush());
    batch = b;
  }
  return batch;
}

/** Lines for one file descriptor, written in batches. */
export class LineBatch {
  private readonly fd: number;
  private parts: string[] = [];
  private bytes = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(fd: number) {
    this.fd = fd;
  }

  write(line: string): void {
    this.parts.push(line);
    this.bytes += line.length;
    if (this.bytes >= BATCH_BYTES) this.flush();
    else if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), BATCH_MS);
      this.timer.unref();
    }
  }

  /** Writes what is pending now. */
  flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.parts.length === 0) return;
    const data = Buffer.from(this.parts.join(''), 'utf8');
    this.parts = [];
    this.bytes = 0;
    writeAll(this.fd, data);
  }
}

// A pipe that is full (EAGAIN) is waited for briefly; a log reader that went away (EPIPE and the like) costs
// the lines, never the process.
function writeAll(fd: number, data: Buffer): void {
  let off = 0;
  let waits = 0;
  while (off < data.length) {
    try {
      off += writeSync(fd, data, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN' || ++waits > 1000) return;
      Atomics.wait(PAUSE, 0, 0, 1);
    }
  }
}

const PAUSE = new Int32Array(new SharedArrayBuffer(4));
