// SPDX-License-Identifier: MIT
// HeaderScanner: watches the header section as the message streams by — field count, section size,
// Received: count (loop detection), Message-ID — without holding more than one header line.

import { reply, R, type Reply } from '../core/reply.ts';

/** Header limits from [smtp]. */
export interface HeaderLimits {
  readonly maxHeaderSize: number;
  readonly maxHeaders: number;
  readonly maxReceived: number;
}

/** Streams through message bytes until the end of the header section. */
export class HeaderScanner {
  private readonly limits: HeaderLimits;
  private carry = '';
  private bytes = 0;
  private fields = 0;
  private received = 0;
  private done = false;
  /** Value of the Message-ID field, if seen (bounded). */
  messageId: string | undefined;
  private lastField = '';

  constructor(limits: HeaderLimits) {
    this.limits = limits;
  }

  /** Feeds a chunk; returns a refusal as soon as a limit is crossed, else null. */
  push(chunk: Buffer): Reply | null {
    if (this.done) return null;
    let pos = 0;
    while (pos < chunk.length && !this.done) {
      const lf = chunk.indexOf(0x0a, pos);
      const end = lf < 0 ? chunk.length : lf + 1;
      this.bytes += end - pos;
      if (this.bytes > this.limits.maxHeaderSize) return R.headersTooBig;
      this.carry += chunk.toString('latin1', pos, end);
      pos = end;
      if (lf < 0) break;
      const r = this.line(this.carry);
      this.carry = '';
      if (r !== null) return r;
    }
    return null;
  }

  private line(l: string): Reply | null {
    if (l === '\r\n' || l === '\n') {
      this.done = true;
      return null;
    }
    if (l[0] === ' ' || l[0] === '\t') {
      if (this.lastField === 'message-id' && this.messageId !== undefined && this.messageId.length < 998) this.messageId += l.trim();
      return null;
    }
    const colon = l.indexOf(':');
    const name = colon > 0 ? l.slice(0, colon).trim().toLowerCase() : '';
    this.lastField = name;
    this.fields++;
    if (this.fields > this.limits.maxHeaders) return reply(552, '5.3.4', 'Too many header fields');
    if (name === 'received') {
      this.received++;
      if (this.received > this.limits.maxReceived) return R.loopDetected;
    } else if (name === 'message-id') {
      this.messageId = Buffer.from(l.slice(colon + 1).trim(), 'latin1').toString('utf8').slice(0, 998);
    }
    return null;
  }
}

export { rfc5322Date } from '../core/date.ts';
