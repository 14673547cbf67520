// SPDX-License-Identifier: MIT
// Message bytes for delivery: read from the queue file in bounded chunks, dot-stuffed for DATA
// (RFC 5321 §4.5.2). Bodies are never held whole in memory beyond one chunk.

import { createReadStream } from 'node:fs';

// Chunk size for reading queue files.
const CHUNK = 64 * 1024;

/** Streams the message region of a queue file. */
export function messageChunks(file: string, offset: number, length: number): AsyncIterable<Buffer> {
  if (length === 0) return (async function* () {})();
  return createReadStream(file, { start: offset, end: offset + length - 1, highWaterMark: CHUNK });
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

const DOT = Buffer.from('.');
const LF_DOT = Buffer.from('\n.');
