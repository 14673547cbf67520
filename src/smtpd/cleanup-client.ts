// SPDX-License-Identifier: MIT
// CleanupTransaction: one connection to private/cleanup per message: begin frame (envelope), body as data
// frames, end; cleanup answers {ok, qid} or a structured SMTP error. A dropped connection = 451 4.3.0.

import { connect, type Socket } from 'node:net';
import type { Envelope } from '../core/envelope.ts';
import { R, reply, type Reply } from '../core/reply.ts';
import { encodeFrame, encodeJson, FrameDecoder, MAX_FRAME } from '../ipc/index.ts';

/** Cleanup's answer for one message. */
export type CleanupResult = { readonly ok: true; readonly qid: string } | { readonly ok: false; readonly reply: Reply; readonly reason?: string };

// Body bytes held back before a write to cleanup (a 4 KB message goes in one write with its begin and end).
const HOLD_LIMIT = 64 * 1024;
const END = encodeFrame('end');

/** Wire form of cleanup's answer. */
export interface CleanupAnswer {
  ok: boolean;
  qid?: string;
  code?: number;
  enhanced?: string;
  text?: string;
  reason?: string;
}

/** Streams one message to cleanup. `write` returns false when the caller should wait for `onDrain`. */
export class CleanupTransaction {
  private readonly sock: Socket;
  private readonly dec = new FrameDecoder();
  private result: CleanupResult | null = null;
  private waiters: ((r: CleanupResult) => void)[] = [];
  private drainCb: (() => void) | null = null;
  private held: Buffer[] = [];
  private heldBytes = 0;

  constructor(path: string, envelope: Envelope) {
    this.sock = connect(path);
    this.sock.setNoDelay(true);
    // Small messages go to cleanup in one write (begin, body, end): fewer syscalls and wake-ups on both sides.
    this.held.push(encodeJson({ type: 'begin', envelope }));
    this.sock.on('data', (chunk) => {
      try {
        for (const f of this.dec.push(chunk)) {
          if (f.kind === 'json') this.settle(fromAnswer(JSON.parse(f.payload.toString('utf8')) as CleanupAnswer));
        }
      } catch {
        this.settle({ ok: false, reply: R.localError, reason: 'bad answer from cleanup' });
      }
    });
    this.sock.on('drain', () => {
      const cb = this.drainCb;
      this.drainCb = null;
      cb?.();
    });
    this.sock.on('error', (e) => this.settle({ ok: false, reply: R.localError, reason: `cleanup: ${e.message}` }));
    this.sock.on('close', () => {
      this.settle({ ok: false, reply: R.localError, reason: 'cleanup closed the connection' });
      const cb = this.drainCb;
      this.drainCb = null;
      cb?.();
    });
  }

  /** An early refusal from cleanup (e.g. headers too large) arrived: stop sending body. */
  get failed(): CleanupResult | null {
    return this.result !== null && !this.result.ok ? this.result : null;
  }

  /** Sends message bytes; false = back off until onDrain. */
  write(chunks: readonly Buffer[]): boolean {
    if (this.result !== null) return true;
    // The DATA reader returns one buffer per line: one frame per line would cost cleanup a frame decode and a
    // queued write step per line (1,280 for a 100 KB message), so the chunks of one read go out as one frame.
    const c = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    for (let i = 0; i < c.length; i += MAX_FRAME) {
      const f = encodeFrame('data', c.subarray(i, i + MAX_FRAME));
      this.held.push(f);
      this.heldBytes += f.length;
    }
    return this.heldBytes < HOLD_LIMIT || this.release();
  }

  // Sends what was held back; false = the socket's buffer is full (wait for onDrain).
  private release(): boolean {
    if (this.held.length === 0) return true;
    const data = this.held.length === 1 ? this.held[0]! : Buffer.concat(this.held);
    this.held = [];
    this.heldBytes = 0;
    return this.sock.write(data);
  }

  /** Calls `cb` once the socket drains (or dies). */
  onDrain(cb: () => void): void {
    if (this.result !== null || this.sock.destroyed) cb();
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

  /** Abandons the message; cleanup removes its partial file. */
  abort(): void {
    if (!this.sock.destroyed) {
      this.sock.end(encodeFrame('abort'));
    }
    this.settle({ ok: false, reply: R.localError, reason: 'aborted' });
  }

  private wait(): Promise<CleanupResult> {
    if (this.result !== null) return Promise.resolve(this.result);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private settle(r: CleanupResult): void {
    if (this.result !== null) return;
    this.result = r;
    if (r.ok) this.sock.end();
    else if (!this.sock.destroyed) this.sock.destroy();
    for (const w of this.waiters) w(r);
    this.waiters = [];
  }
}

function fromAnswer(a: CleanupAnswer): CleanupResult {
  if (a.ok && typeof a.qid === 'string') return { ok: true, qid: a.qid };
  if (typeof a.code === 'number' && a.code >= 400 && a.code < 600) {
    return { ok: false, reply: reply(a.code, a.enhanced ?? '', a.text ?? 'Rejected'), reason: a.reason ?? '' };
  }
  return { ok: false, reply: R.localError, reason: a.reason ?? 'cleanup failed' };
}
