// SPDX-License-Identifier: MIT
// request: one JSON question, one JSON answer over a Unix socket (control socket, tests); RequestPool: the same
// over kept connections (qmgr → delivery agents).

import { connect, type Socket } from 'node:net';
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

/** A kept connection of a RequestPool. */
interface PooledConn {
  readonly sock: Socket;
  readonly dec: FrameDecoder;
  answer: ((r: unknown) => void) | null;
  dead: boolean;
  used: boolean;
}

/**
 * request() over kept connections: one JSON question, one JSON answer, one at a time per connection, and the
 * connection stays open for the next question (when several servers share the socket, the kernel spread the
 * connections over them when they were made). A connection whose server went away is dropped.
 */
export class RequestPool {
  private readonly path: string;
  private readonly maxIdle: number;
  private idle: PooledConn[] = [];

  constructor(path: string, maxIdle = 64) {
    this.path = path;
    this.maxIdle = maxIdle;
  }

  /**
   * Resolves with the answer, or with an Error (with `code` when the socket gave one) when the connection
   * failed first; never rejects. A question written to a kept connection whose server had already gone
   * (EPIPE: it never reached it) is asked once more on a new connection.
   */
  async ask(msg: unknown): Promise<unknown> {
    const frame = encodeJson(msg);
    for (let attempt = 0; ; attempt++) {
      let c = this.idle.pop();
      while (c !== undefined && (c.dead || c.sock.destroyed)) c = this.idle.pop();
      const conn = c ?? this.open();
      const reused = conn.used;
      conn.used = true;
      const r = await new Promise<unknown>((resolve) => {
        conn.answer = resolve;
        conn.sock.write(frame);
      });
      if (!(r instanceof Error)) {
        if (!conn.dead && this.idle.length < this.maxIdle) this.idle.push(conn);
        else conn.sock.destroy();
        return r;
      }
      if (reused && attempt === 0 && (r as NodeJS.ErrnoException).code === 'EPIPE') continue;
      return r;
    }
  }

  /** Closes the idle connections (a connection in use closes after its answer). */
  close(): void {
    for (const c of this.idle) c.sock.destroy();
    this.idle = [];
  }

  private open(): PooledConn {
    const c: PooledConn = { sock: connect(this.path), dec: new FrameDecoder(), answer: null, dead: false, used: false };
    const fail = (e: Error) => {
      if (!c.dead) {
        c.dead = true;
        const i = this.idle.indexOf(c);
        if (i >= 0) this.idle.splice(i, 1);
        c.sock.destroy();
      }
      const a = c.answer;
      c.answer = null;
      a?.(e);
    };
    c.sock.on('data', (chunk: Buffer) => {
      try {
        for (const f of c.dec.push(chunk)) {
          if (f.kind !== 'json') continue;
          const a = c.answer;
          c.answer = null;
          if (a === null) return fail(new Error('unexpected answer'));
          a(JSON.parse(f.payload.toString('utf8')));
        }
      } catch {
        fail(new Error('bad answer'));
      }
    });
    c.sock.on('error', (e: NodeJS.ErrnoException) => fail(Object.assign(new Error(e.code ?? e.message), { code: e.code })));
    c.sock.on('close', () => fail(new Error('connection lost')));
    return c;
  }
}
