// SPDX-License-Identifier: MIT
// Message bytes for delivery: read from the queue file in bounded chunks, dot-stuffed for DATA
// (RFC 5321 §4.5.2). Bodies are never held whole in memory beyond one chunk.

import { closeSync, createReadStream, openSync } from 'node:fs';
import { readFully } from '../queue/index.ts';

// Chunk size for reading queue files.
const CHUNK = 64 * 1024;
// Up to this size a message is read in one synchronous read (it is in the page cache, just written: a stream
// would cost an open, a read per chunk and a close, each a hand-off to the thread pool).
const READ_AT_ONCE = 1024 * 1024;

/** Streams the message region of a queue file. */
export function messageChunks(file: string, offset: number, length: number): AsyncIterable<Buffer> | Iterable<Buffer> {
  if (length === 0) return [];
  if (length <= READ_AT_ONCE) return [readRegion(file, offset, length)];
  return createReadStream(file, { start: offset, end: offset + length - 1, highWaterMark: CHUNK });
}

function readRegion(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(length);
    const got = readFully(fd, buf, offset);
    return got === length ? buf : buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

/** Dot-stuffs a stream chunk by chunk; `state.atLineStart` carries across chunks. */
export function dotStuff(chunk: Buffer, state: { atLineStart: boolean }): Buffer {
  const parts: Buffer[] = [];
  let start = 0;
  if (state.atLineStart && chunk[0] === 0x2e) parts.push(DOT);
  for (let i = chunk.indexOf(LF_DOT); i >= 0; i = chunk.indexOf(LF_DOT, i + 1)) {
    parts.push(chunk.subarray(start, i + 1), DOT);
    start = i + 1;
  }
  if (chunk.length > 0) state.atLineStart = chunk[chunk.length - 1] === 0x0a;
  if (parts.length === 0) return chunk;
  parts.push(chunk.subarray(start));
  return Buffer.concat(parts);
}

/**
 * Turns CRLF line ends into LF, chunk by chunk, for files on a Unix host (Maildir: qmail's format, what
 * Postfix local(8) and Dovecot write). A CR ending a chunk is held in `state.cr` until the next chunk shows
 * whether an LF follows (`crlfEnd` releases it at the end). A CR not followed by LF stays.
 */
export function crlfToLf(chunk: Buffer, state: { cr: boolean }): Buffer {
  if (chunk.length === 0) return chunk;
  const parts: Buffer[] = [];
  let start = 0;
  if (state.cr) {
    state.cr = false;
    if (chunk[0] === 0x0a) {
      parts.push(LF);
      start = 1;
    } else parts.push(CR);
  }
  let end = chunk.length;
  if (end > start && chunk[end - 1] === 0x0d) {
    state.cr = true;
    end--;
  }
  for (let i = chunk.indexOf(CRLF, start); i >= 0 && i < end; i = chunk.indexOf(CRLF, start)) {
    parts.push(chunk.subarray(start, i));
    start = i + 1;
  }
  if (parts.length === 0) return start === 0 && end === chunk.length ? chunk : chunk.subarray(start, end);
  parts.push(chunk.subarray(start, end));
  return Buffer.concat(parts);
}

/** What `crlfToLf` still holds at the end of the input: a last CR, or nothing. */
export function crlfEnd(state: { cr: boolean }): Buffer {
  const held = state.cr;
  state.cr = false;
  return held ? CR : Buffer.alloc(0);
}

const CR = Buffer.from('\r');
const LF = Buffer.from('\n');
const CRLF = Buffer.from('\r\n');
const DOT = Buffer.from('.');
const LF_DOT = Buffer.from('\n.');
