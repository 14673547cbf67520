// SPDX-License-Identifier: MIT
// The message body of one transaction on its way to cleanup: DataBody for DATA (dot-unstuffed up to the only
// real end, CRLF "." CRLF), Chunking for BDAT (RFC 3030: counted chunks taken as they are). Each counts the
// size against the limit, notes bare CR/LF and NUL without stopping (the session reads on to the real end
// and answers once), streams the bytes to cleanup with backpressure, and says at the end whether the message
// may be committed. The Connection owns the socket, the input buffer and the replies.

import { R, reply, type Reply } from '../core/reply.ts';
import type { CleanupTransaction } from './cleanup-client.ts';
import { DataReader, LineEndChecker } from './data.ts';

const EMPTY = Buffer.alloc(0);
const CRLF = Buffer.from('\r\n');

/** Why a complete body is refused (the reply, and the reason for the log), or null: cleanup may commit it. */
export type Refusal = { readonly reply: Reply; readonly reason: string } | null;

/** What one push of input did. */
export interface Fed {
  /** The body (DATA) or chunk (BDAT) is complete; `rest` is the input after it (pipelined commands). */
  readonly done: boolean;
  readonly rest: Buffer;
  /** cleanup's socket is full: push nothing more before this resolves. */
  readonly wait: Promise<void> | null;
}

// Writes to cleanup; a promise when its socket is full.
function send(tx: CleanupTransaction, out: readonly Buffer[]): Promise<void> | null {
  if (tx.failed !== null || out.length === 0 || tx.write(out)) return null;
  return new Promise<void>((r) => tx.onDrain(r));
}

/** A DATA body. */
export class DataBody {
  readonly tx: CleanupTransaction;
  private readonly reader = new DataReader();
  private readonly maxSize: number;
  private tooBig = false;

  constructor(tx: CleanupTransaction, maxSize: number) {
    this.tx = tx;
    this.maxSize = maxSize;
  }

  /** Bytes of message content (after unstuffing). */
  get size(): number {
    return this.reader.size;
  }

  /** Takes input up to the end of data (the rest is returned); past the size limit the transaction is aborted. */
  push(input: Buffer): Fed {
    const res = this.reader.push(input);
    const rest = res.done ? input.subarray(res.consumed) : EMPTY;
    if (!this.tooBig && this.reader.size > this.maxSize) {
      this.tooBig = true;
      this.tx.abort();
    }
    return { done: res.done, rest, wait: this.verdict() === null ? send(this.tx, res.out) : null };
  }

  /** At the end of data: why the message is refused, or null. */
  verdict(): Refusal {
    if (this.reader.nul) return { reply: R.nulInData, reason: 'NUL in data' };
    if (this.reader.bareLineEnd) return { reply: R.bareLfData, reason: 'bare CR or LF in data' };
    if (this.tooBig) return { reply: R.tooBig, reason: 'message too large' };
    return null;
  }
}

/** A BDAT body: the transaction's chunks, from the first BDAT to the one with LAST. */
export class BdatBody {
  readonly tx: CleanupTransaction;
  private readonly checker = new LineEndChecker();
  private readonly maxSize: number;
  size = 0;

  constructor(tx: CleanupTransaction, maxSize: number) {
    this.tx = tx;
    this.maxSize = maxSize;
  }

  /** Takes chunk bytes: R.tooBig once past the limit (the transaction is aborted), a wait, or null. */
  push(part: Buffer): Reply | Promise<void> | null {
    this.size += part.length;
    this.checker.push(part);
    if (this.size <= this.maxSize) return send(this.tx, [part]);
    this.tx.abort();
    return R.tooBig;
  }

  /**
   * After the LAST chunk, once: why the message is refused, or null; a message that may be committed gets the
   * CRLF it needs to be relayed as lines.
   */
  verdict(): Refusal {
    if (this.checker.nul) return { reply: R.nulInData, reason: 'NUL in BDAT' };
    if (this.checker.bareLineEnd || this.checker.pendingCr) return { reply: R.bareLfData, reason: 'bare CR or LF in BDAT' };
    if (this.checker.endsMidLine) this.tx.write([CRLF]);
    return null;
  }
}

/**
 * The BDAT command stream of a session: the chunk being read (its size, LAST), its refusal if any, and the
 * refusal that makes the rest of a failed transaction's chunks be refused too, until its LAST.
 */
export class Chunking {
  private remaining = 0;
  private last = false;
  private error: Reply | null = null;
  /** A chunk of this transaction was refused: its next chunks get the same answer until LAST. */
  failed: Reply | null = null;

  /**
   * Starts a chunk from BDAT's arguments; `open` makes the transaction's body when there is none yet (null
   * when the transaction may not take a body: its refusal). Returns false on a syntax error: the chunk's size
   * is unknown, so its bytes cannot be skipped safely and the connection must close (no command smuggling).
   */
  start(args: string, body: BdatBody | null, open: () => BdatBody | Reply): { ok: false } | { ok: true; body: BdatBody | null } {
    const m = /^(\d{1,15})(?: +(LAST))? *$/i.exec(args);
    if (m === null) return { ok: false };
    this.remaining = Number(m[1]);
    this.last = m[2] !== undefined;
    this.error = this.failed;
    if (this.error === null && body === null) {
      const opened = open();
      if (opened instanceof BdatBody) body = opened;
      else this.error = opened;
    }
    return { ok: true, body };
  }

  /** Consumes the current chunk's bytes from `input` into `body` (when the chunk is not refused). */
  push(input: Buffer, body: BdatBody | null): Fed {
    if (this.remaining === 0) return { done: true, rest: input, wait: null };
    const take = Math.min(this.remaining, input.length);
    this.remaining -= take;
    let wait: Promise<void> | null = null;
    if (this.error === null && body !== null) {
      const r = body.push(input.subarray(0, take));
      if (r instanceof Promise) wait = r;
      else if (r !== null) this.error = r;
    }
    return { done: this.remaining === 0, rest: input.subarray(take), wait };
  }

  /**
   * The chunk is complete. `end`: it was LAST and accepted, so the body goes to cleanup. Otherwise `answer`
   * is the chunk's reply and `abandon` says the transaction's body is gone (refused).
   */
  finish(body: BdatBody | null): { end: true } | { end: false; answer: Reply; abandon: boolean; over: boolean } {
    if (this.error !== null || body === null) {
      const r = this.error ?? R.badSequence;
      this.failed = this.last ? null : r;
      return { end: false, answer: r, abandon: true, over: this.last };
    }
    if (!this.last) return { end: false, answer: reply(250, '2.0.0', `${body.size} octets received`), abandon: false, over: false };
    return { end: true };
  }
}
