// SPDX-License-Identifier: MIT
// CleanupTransaction: one message to private/cleanup: begin frame (envelope), body as data frames, end;
// cleanup answers {ok, qid} or a structured SMTP error. A dropped connection = 451 4.3.0. Connections are
// pooled per smtpd process (CleanupPool) and carry one message at a time.

import { connect, type Socket } from 'node:net';
import type { Envelope } from '../core/envelope.ts';
import { R, reply, type Reply } from '../core/reply.ts';
import { encodeFrame, encodeJson, frameHeader, FrameDecoder, MAX_FRAME } from '../ipc/index.ts';

/** Cleanup's answer for one message. */
export type CleanupResult = { readonly ok: true; readonly qid: string } | { readonly ok: false; readonly reply: Reply; readonly reason?: string };

// Body bytes held back before a write to cleanup (a 4 KB message goes in one write with its begin and end).
const HOLD_LIMIT = 64 * 1024;
const END = encodeFrame('end');
const SMALL_WRITE = 16 * 1024;

/** Wire form of cleanup's answer. */
export interface CleanupAnswer {
  ok: boolean;
  qid?: string;
  code?: number;
  enhanced?: string;
  text?: string;
  reason?: string;
}

/** What a connection reports to the transaction using it. */
interface ConnUser {
  answer(a: CleanupAnswer): void;
  broken(reason: string): void;
  drained(): void;
}

/**
 * One connection to cleanup, kept open between messages (one message at a time): reusing it saves a socket,
 * a connect, an accept and two closes per message on both sides.
 */
class CleanupConn {
  readonly sock: Socket;
  private readonly dec = new FrameDecoder();
  private user: ConnUser | null = null;
  private readonly pool: CleanupPool;
  dead = false;

  constructor(path: string, pool: CleanupPool) {
    this.pool = pool;
    this.sock = connect(path);
    this.sock.on('data', (chunk: Buffer) => {
      let answers: CleanupAnswer[];
      try {
        answers = this.dec.push(chunk).filter((f) => f.kind === 'json').map((f) => JSON.parse(f.payload.toString('utf8')) as CleanupAnswer);
      } catch {
        return this.fail('bad answer from cleanup');
      }
      for (const a of answers) {
        // Nothing is owed to an idle connection: anything arriving there is a protocol error.
        if (this.user === null) return this.fail('unexpected answer from cleanup');
        this.user.answer(a);
      }
    });
    this.sock.on('drain', () => this.user?.drained());
    this.sock.on('error', (e) => this.fail(`cleanup: ${e.message}`));
    this.sock.on('close', () => this.fail('cleanup closed the connection'));
  }

  attach(user: ConnUser): void {
    this.user = user;
  }

  detach(): void {
    this.user = null;
  }

  private fail(reason: string): void {
    const user = this.user;
    this.user = null;
    if (!this.dead) {
      this.dead = true;
      this.pool.forget(this);
      this.sock.destroy();
    }
    user?.broken(reason);
  }

  destroy(): void {
    this.user = null;
    this.fail('closed');
  }
}

/** The connections of one smtpd process to cleanup: idle ones are reused by the next message. */
export class CleanupPool {
  readonly path: string;
  private readonly maxIdle: number;
  private idle: CleanupConn[] = [];

  constructor(path: string, maxIdle = 32) {
    this.path = path;
    this.maxIdle = maxIdle;
  }

  /** An idle connection, or a new one. */
  acquire(): CleanupConn {
    for (;;) {
      const c = this.idle.pop();
      if (c === undefined) return new CleanupConn(this.path, this);
      if (!c.dead && !c.sock.destroyed) return c;
    }
  }

  /** Returns a connection whose message was answered. */
  release(c: CleanupConn): void {
    c.detach();
    if (c.dead) return;
    if (this.idle.length < this.maxIdle) this.idle.push(c);
    else c.destroy();
  }

  /** A connection died (cleanup restarted, or an error): never hand it out again. */
  forget(c: CleanupConn): void {
    const i = this.idle.indexOf(c);
    if (i >= 0) this.idle.splice(i, 1);
  }

  /** Closes the idle connections. */
  close(): void {
    for (const c of [...this.idle]) c.destroy();
    this.idle = [];
  }
}

/** Streams one message to cleanup. `write` returns false when the caller should wait for `onDrain`. */
export class CleanupTransaction implements ConnUser {
  private readonly conn: CleanupConn;
  private readonly pool: CleanupPool;
  private result: CleanupResult | null = null;
  private waiters: ((r: CleanupResult) => void)[] = [];
  private drainCb: (() => void) | null = null;
  private held: Buffer[] = [];
  private heldBytes = 0;
  private sent = false;

  constructor(pool: CleanupPool, envelope: Envelope) {
    this.pool = pool;
    this.conn = pool.acquire();
    this.conn.attach(this);
    // Small messages go to cleanup in one write (begin, body, end): fewer syscalls and wake-ups on both sides.
    const begin = encodeJson({ type: 'begin', envelope });
    this.held.push(begin);
    this.heldBytes = begin.length;
  }

  answer(a: CleanupAnswer): void {
    this.settle(fromAnswer(a));
  }

  broken(reason: string): void {
    this.settle({ ok: false, reply: R.localError, reason });
  }

  drained(): void {
    const cb = this.drainCb;
    this.drainCb = null;
    cb?.();
  }

  /** An early refusal from cleanup (e.g. headers too large) arrived: stop sending body. */
  get failed(): CleanupResult | null {
    return this.result !== null && !this.result.ok ? this.result : null;
  }

  /** Sends message bytes; false = back off until onDrain. */
  write(chunks: readonly Buffer[]): boolean {
    if (this.result !== null) return true;
    // The chunks of one read go out as one data frame: its header, then the chunks themselves, written
    // together with writev (no copy of the body in this process).
    let total = 0;
    for (const c of chunks) total += c.length;
    if (total === 0) return true;
    if (total > MAX_FRAME) {
      const all = Buffer.concat(chunks as Buffer[], total);
      for (let i = 0; i < all.length; i += MAX_FRAME) this.hold([all.subarray(i, i + MAX_FRAME)]);
    } else this.hold(chunks);
    return this.heldBytes < HOLD_LIMIT || this.release();
  }

  private hold(chunks: readonly Buffer[]): void {
    let n = 0;
    for (const c of chunks) n += c.length;
    this.held.push(frameHeader('data', n), ...chunks);
    this.heldBytes += 5 + n;
  }

  // Sends what was held back; false = the socket's buffer is full (wait for onDrain).
  private release(): boolean {
    if (this.held.length === 0) return true;
    const sock = this.conn.sock;
    const held = this.held;
    const bytes = this.heldBytes;
    this.held = [];
    this.heldBytes = 0;
    this.sent = true;
    if (held.length === 1) return sock.write(held[0]!);
    // A small message is cheaper copied once than passed through the stream as many writes.
    if (bytes <= SMALL_WRITE) return sock.write(Buffer.concat(held, bytes));
    sock.cork();
    let ok = true;
    for (const b of held) ok = sock.write(b);
    sock.uncork();
    return ok;
  }

  /** Calls `cb` once the socket drains (or dies). */
  onDrain(cb: () => void): void {
    if (this.result !== null || this.conn.dead) cb();
    else this.drainCb = cb;
  }

  /** Ends the message and waits for cleanup's verdict. */
  end(): Promise<CleanupResult> {
    if (this.result === null) {
      this.held.push(END);
      this.heldBytes += END.length;
      this.release();
    }
    return this.wait();
  }

  /**
   * Abandons the message. Nothing sent yet: the connection goes back to the pool untouched. Else cleanup is
   * told to drop its partial file and the connection is closed.
   */
  abort(): void {
    if (this.result !== null) return;
    if (!this.sent) {
      this.held = [];
      this.settle({ ok: false, reply: R.localError, reason: 'aborted' }, true);
      return;
    }
    if (!this.conn.dead) this.conn.sock.end(encodeFrame('abort'));
    this.settle({ ok: false, reply: R.localError, reason: 'aborted' });
  }

  private wait(): Promise<CleanupResult> {
    if (this.result !== null) return Promise.resolve(this.result);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private settle(r: CleanupResult, unused = false): void {
    if (this.result !== null) return;
    this.result = r;
    // Only a connection whose message ended cleanly (or never began) is reused; after a refusal or an error
    // cleanup may still be reading (or discarding) this message's frames. After an abort frame cleanup closes
    // its end; the connection's close handler then forgets it.
    if (r.ok || unused) this.pool.release(this.conn);
    else if (r.reason === 'aborted') this.conn.detach();
    else this.conn.destroy();
    for (const w of this.waiters) w(r);
    this.waiters = [];
    // A writer waiting for the socket to drain need not wait any more.
    this.drained();
  }
}

function fromAnswer(a: CleanupAnswer): CleanupResult {
  if (a.ok && typeof a.qid === 'string') return { ok: true, qid: a.qid };
  if (typeof a.code === 'number' && a.code >= 400 && a.code < 600) {
    return { ok: false, reply: reply(a.code, a.enhanced ?? '', a.text ?? 'Rejected'), reason: a.reason ?? '' };
  }
  return { ok: false, reply: R.localError, reason: a.reason ?? 'cleanup failed' };
}
