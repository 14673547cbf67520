// SPDX-License-Identifier: MIT
// request: one JSON question, one JSON answer over a Unix socket (control socket, tests).

import { connect } from 'node:net';
import { encodeJson, FrameDecoder } from './framing.ts';

/** Sends `msg` to the socket at `path` and resolves with the first JSON frame answered. Rejects on connect errors. */
export function request(path: string, msg: unknown, timeoutMs = 30_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    const dec = new FrameDecoder();
    const timer = setTimeout(() => {
      sock.destroy();
      reject(Object.assign(new Error('timeout waiting for answer'), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    sock.on('connect', () => sock.write(encodeJson(msg)));
    sock.on('data', (chunk) => {
      try {
        for (const f of dec.push(chunk)) {
          if (f.kind === 'json') {
            clearTimeout(timer);
            sock.end();
            resolve(JSON.parse(f.payload.toString('utf8')));
            return;
          }
        }
      } catch (e) {
        clearTimeout(timer);
        sock.destroy();
        reject(e);
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      reject(Object.assign(new Error('connection closed without an answer'), { code: 'ECONNRESET' }));
    });
  });
}
