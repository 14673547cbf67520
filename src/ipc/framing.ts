// SPDX-License-Identifier: MIT
// Framing: one frame = 4-byte big-endian length, 1-byte kind, payload (at most 1 MiB).

import { invariant } from '../core/invariant.ts';

/** Frame kinds on the wire. */
export const KIND = { json: 1, data: 2, end: 3, abort: 4 } as const;
export type FrameKind = keyof typeof KIND;

/** Largest payload of one frame. */
export const MAX_FRAME = 1 << 20;

const NAMES: Record<number, FrameKind> = { 1: 'json', 2: 'data', 3: 'end', 4: 'abort' };

/** A decoded frame. */
export interface Frame {
  readonly kind: FrameKind;
  readonly payload: Buffer;
}

/** The 5-byte header of a frame whose payload (`length` bytes) is written after it separately. */
export function frameHeader(kind: FrameKind, length: number): Buffer {
  invariant(length <= MAX_FRAME, 'frame payload too large');
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32BE(length, 0);
  head[4] = KIND[kind];
  return head;
}

/** Encodes one frame; payloads over MAX_FRAME must be split by the caller (see encodeData). */
export function encodeFrame(kind: FrameKind, payload: Buffer = Buffer.alloc(0)): Buffer {
  invariant(payload.length <= MAX_FRAME, 'frame payload too large');
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32BE(payload.length, 0);
  head[4] = KIND[kind];
  return payload.length === 0 ? head : Buffer.concat([head, payload], 5 + payload.length);
}

/** Encodes a JSON value as one frame. */
export function encodeJson(value: unknown): Buffer {
  return encodeFrame('json', Buffer.from(JSON.stringify(value), 'utf8'));
}

/** Encodes any amount of data as one or more data frames. */
export function encodeData(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += MAX_FRAME) out.push(encodeFrame('data', data.subarray(i, i + MAX_FRAME)));
  return out;
}

/**
 * Incremental decoder: push bytes, get whole frames. Throws on a malformed stream (bad kind or oversize).
 * With `streamData`, a data frame is returned in pieces as its bytes arrive (data is a byte stream: where it
 * is cut does not matter), so a large body is never reassembled; other frames always come whole.
 */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);
  private readonly streamData: boolean;
  // Bytes of a streamed data frame still to come.
  private dataLeft = 0;

  constructor(opts: { streamData?: boolean } = {}) {
    this.streamData = opts.streamData === true;
  }

  /** Adds bytes and returns every frame (or data piece) now complete. */
  push(chunk: Buffer): Frame[] {
    const frames: Frame[] = [];
    let c = chunk;
    if (this.dataLeft > 0) {
      const n = Math.min(this.dataLeft, c.length);
      frames.push({ kind: 'data', payload: c.subarray(0, n) });
      this.dataLeft -= n;
      c = c.subarray(n);
      if (c.length === 0) return frames;
    }
    this.buf = this.buf.length === 0 ? c : Buffer.concat([this.buf, c]);
    let off = 0;
    while (this.buf.length - off >= 5) {
      const len = this.buf.readUInt32BE(off);
      const kind = NAMES[this.buf[off + 4]!];
      if (len > MAX_FRAME || kind === undefined) throw new Error('ipc: malformed frame');
      const avail = this.buf.length - off - 5;
      if (avail < len) {
        if (this.streamData && kind === 'data') {
          if (avail > 0) frames.push({ kind, payload: this.buf.subarray(off + 5) });
          this.dataLeft = len - avail;
          off = this.buf.length;
        }
        break;
      }
      frames.push({ kind, payload: this.buf.subarray(off + 5, off + 5 + len) });
      off += 5 + len;
    }
    this.buf = off === this.buf.length ? Buffer.alloc(0) : this.buf.subarray(off);
    return frames;
  }
}

/** Decodes `chunk`; a malformed stream (a peer that does not speak the protocol) destroys `sock`: null. */
export function framesOrDrop(dec: FrameDecoder, chunk: Buffer, sock: { destroy(): void }): Frame[] | null {
  try {
    return dec.push(chunk);
  } catch {
    sock.destroy();
    return null;
  }
}
