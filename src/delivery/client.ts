// SPDX-License-Identifier: MIT
// ReplyReader: an SMTP/LMTP client connection that reads replies (multi-line, bounded) with a timeout per
// reply and writes commands in as few writes as possible (pipelining, no small-write stalls).

import type { Socket } from 'node:net';

/** A reply from the server. */
export interface ServerReply {
  readonly code: number;
  /** Enhanced status code if the reply carries one, else "". */
  readonly enhanced: string;
  /** Text of all lines joined with " " (codes removed). */
  readonly text: string;
  /** Raw lines of the reply. */
  readonly lines: readonly string[];
}

/** A failure of the connection itself (timeout, reset, garbage); the job's recipients are deferred. */
export class ConnectionError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'ConnectionError';
  }
}

// Limits on what a server may send us (RFC 5321 §4.5.3.1.5: reply lines at most 512 octets; be lenient).
const MAX_REPLY_LINE = 4096;
const MAX_REPLY_LINES = 100;
// A write the peer does not take within this long fails the connection (callers pass the stage's timeout).
const WRITE_TIMEOUT = 300_000;

/** Reads replies from a connected socket. */
export class ReplyReader {
  sock: Socket;
  private buf = '';
  private replies: ServerReply[] = [];
  private waiter: ((r: ServerReply | Error) => void) | null = null;
  // A write waiting for 'drain'.
  private writeWaiter: ((e: Error) => void) | null = null;
  private error: Error | null = null;
  private pendingLines: string[] = [];

  constructor(sock: Socket) {
    this.sock = sock;
    this.attach(sock);
  }

  /** Moves reading to a new socket (after STARTTLS). */
  attach(sock: Socket): void {
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on('data', (c: Buffer) => this.onData(c.toString('latin1')));
    sock.on('error', (e) => this.fail(new ConnectionError(e.message)));
    sock.on('close', () => this.fail(new ConnectionError('connection closed by server')));
  }

  private onData(s: string): void {
    this.buf += s;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '');
      this.buf = this.buf.slice(nl + 1);
      if (!/^\d{3}([ -]|$)/.test(line)) return this.fail(new ConnectionError(`bad reply line: ${line.slice(0, 80)}`));
      this.pendingLines.push(line.slice(0, MAX_REPLY_LINE));
      if (this.pendingLines.length > MAX_REPLY_LINES) return this.fail(new ConnectionError('reply too long'));
      if (line[3] !== '-') {
        const lines = this.pendingLines;
        this.pendingLines = [];
        this.push(toReply(lines));
      }
    }
    if (this.buf.length > MAX_REPLY_LINE) this.fail(new ConnectionError('reply line too long'));
  }

  private push(r: ServerReply): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(r);
    } else this.replies.push(r);
  }

  private fail(e: Error): void {
    if (this.error) return;
    this.error = e;
    const w = this.waiter;
    this.waiter = null;
    w?.(e);
    this.writeWaiter?.(e);
  }

  /** True when no error happened and replies are not pending (the connection may be reused). */
  get healthy(): boolean {
    return this.error === null && this.replies.length === 0 && !this.sock.destroyed;
  }

  /** Reads the next reply; throws ConnectionError on timeout or close. */
  read(timeoutMs: number): Promise<ServerReply> {
    const r = this.replies.shift();
    if (r) return Promise.resolve(r);
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = null;
        const e = new ConnectionError(`timeout after ${timeoutMs / 1000}s waiting for a reply`);
        this.fail(e);
        this.sock.destroy();
        reject(e);
      }, timeoutMs);
      this.waiter = (x) => {
        clearTimeout(t);
        if (x instanceof Error) reject(x);
        else resolve(x);
      };
    });
  }

  /**
   * Writes data; resolves when it has been handed to the kernel (backpressure). A peer that stops reading
   * fails the connection after `timeoutMs` (RFC 5321 §4.5.3.2.5: the data block timeout), and a connection
   * that breaks while waiting rejects at once.
   */
  write(data: string | Buffer, timeoutMs = WRITE_TIMEOUT): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      const ok = this.sock.write(data, (e) => (e ? reject(new ConnectionError(e.message)) : undefined));
      if (ok) return resolve();
      const done = () => {
        clearTimeout(timer);
        this.sock.off('drain', onDrain);
        this.writeWaiter = null;
      };
      const onDrain = () => {
        done();
        resolve();
      };
      const timer = setTimeout(() => {
        done();
        const e = new ConnectionError(`timeout after ${timeoutMs / 1000}s sending data (the peer stopped reading)`);
        this.fail(e);
        this.sock.destroy();
        reject(e);
      }, timeoutMs);
      this.writeWaiter = (e) => {
        done();
        reject(e);
      };
      this.sock.on('drain', onDrain);
    });
  }
}

function toReply(lines: string[]): ServerReply {
  const code = Number(lines[0]!.slice(0, 3));
  const texts = lines.map((l) => l.slice(4));
  const m = /^([245]\.\d{1,3}\.\d{1,3})(?:\s|$)/.exec(texts[0] ?? '');
  return { code, enhanced: m ? m[1]! : '', text: texts.join(' ').replace(/\s+/g, ' ').trim(), lines };
}

/** One-line form of a reply for logs, queue state and DSNs: "550 5.1.1 User unknown". */
export function replyLine(r: ServerReply): string {
  return `${r.code} ${r.text}`.slice(0, 500);
}
