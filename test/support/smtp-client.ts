// SPDX-License-Identifier: MIT
// A raw SMTP test client: send exact bytes, read whole replies (multi-line aware), assert codes.

import { connect, type Socket } from 'node:net';
import assert from 'node:assert/strict';

/** One reply as read from the wire. */
export interface WireReply {
  readonly code: number;
  /** Full text of all lines, joined by "\n", without the codes. */
  readonly text: string;
  readonly lines: readonly string[];
}

/** A connection that reads replies in order. */
export class SmtpClient {
  private readonly sock: Socket;
  private buf = '';
  private readonly queue: WireReply[] = [];
  private waiting: ((r: WireReply | null) => void) | null = null;
  closed = false;

  private constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (c: Buffer) => {
      this.buf += c.toString('utf8');
      this.parse();
    });
    sock.on('close', () => {
      this.closed = true;
      const w = this.waiting;
      this.waiting = null;
      w?.(null);
    });
    sock.on('error', () => {});
  }

  /** Connects to 127.0.0.1:port (or host) and returns once connected. */
  static connect(port: number, host = '127.0.0.1'): Promise<SmtpClient> {
    return new Promise((resolve, reject) => {
      const s = connect(port, host);
      s.once('connect', () => resolve(new SmtpClient(s)));
      s.once('error', reject);
    });
  }

  private parse(): void {
    for (;;) {
      // A reply ends with a line "NNN " (or "NNN" alone).
      const lines: string[] = [];
      let off = 0;
      let done = false;
      for (;;) {
        const nl = this.buf.indexOf('\r\n', off);
        if (nl < 0) break;
        const line = this.buf.slice(off, nl);
        lines.push(line);
        off = nl + 2;
        if (line.length < 4 || line[3] === ' ') {
          done = true;
          break;
        }
      }
      if (!done) return;
      this.buf = this.buf.slice(off);
      const r: WireReply = { code: Number(lines[0]!.slice(0, 3)), text: lines.map((l) => l.slice(4)).join('\n'), lines };
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = null;
        w(r);
      } else this.queue.push(r);
    }
  }

  /** Next reply, or null when the server closed the connection. */
  read(timeoutMs = 10_000): Promise<WireReply | null> {
    const q = this.queue.shift();
    if (q) return Promise.resolve(q);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting = null;
        reject(new Error('timeout waiting for a reply'));
      }, timeoutMs);
      this.waiting = (r) => {
        clearTimeout(t);
        resolve(r);
      };
    });
  }

  /** Writes raw bytes (nothing added). */
  write(data: string | Buffer): void {
    this.sock.write(data);
  }

  /** Sends a command line (CRLF added) and returns the reply. */
  async cmd(line: string): Promise<WireReply> {
    this.write(line + '\r\n');
    const r = await this.read();
    assert.ok(r !== null, `connection closed after ${line}`);
    return r;
  }

  /** Reads a reply and asserts its code (and enhanced code when given). */
  async expect(code: number, enhanced?: string): Promise<WireReply> {
    const r = await this.read();
    assert.ok(r !== null, `connection closed while expecting ${code}`);
    assert.equal(r.code, code, `expected ${code}, got: ${r.lines.join(' | ')}`);
    if (enhanced !== undefined) assert.ok(r.text.startsWith(enhanced + ' '), `expected ${enhanced}, got: ${r.text}`);
    return r;
  }

  /** Sends a line and asserts the reply code. */
  async ok(line: string, code = 250, enhanced?: string): Promise<WireReply> {
    this.write(line + '\r\n');
    return this.expect(code, enhanced);
  }

  /** Resolves when the server has closed the connection. */
  waitClosed(timeoutMs = 10_000): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('server did not close the connection')), timeoutMs);
      this.sock.once('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** Reads every reply until the server closes the connection (use after QUIT or a closing reply). */
  async readUntilClosed(timeoutMs = 10_000): Promise<WireReply[]> {
    const out: WireReply[] = [];
    for (;;) {
      const r = await this.read(timeoutMs);
      if (r === null) return out;
      out.push(r);
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

/** "250 2.0.0" style summary of a reply: code and enhanced status (first word of the text when it looks like one). */
export function summary(r: WireReply): string {
  const enh = /^[245]\.\d{1,3}\.\d{1,3}(?= |$)/.exec(r.text);
  return enh === null ? String(r.code) : `${r.code} ${enh[0]}`;
}

/** Connects, reads the greeting and says EHLO; returns the client ready for MAIL. */
export async function openSession(port: number, host = '127.0.0.1'): Promise<SmtpClient> {
  const c = await SmtpClient.connect(port, host);
  try {
    await c.expect(220);
    await c.ok('EHLO client.test');
  } catch (e) {
    c.close();
    throw e;
  }
  return c;
}

/** The queue ID in a "250 2.0.0 Ok: queued as ID" reply. */
export function queueIdOf(r: WireReply): string {
  const m = /queued as ([0-9A-Z]{16})/.exec(r.text);
  assert.ok(m !== null, `no queue ID in: ${r.lines.join(' | ')}`);
  return m[1]!;
}

/** Greets, EHLOs and sends one message with DATA; returns the final reply. */
export async function sendMessage(port: number, from: string, to: string[], body: string): Promise<WireReply> {
  const c = await SmtpClient.connect(port);
  try {
    await c.expect(220);
    await c.ok('EHLO client.test');
    await c.ok(`MAIL FROM:<${from}>`);
    for (const t of to) await c.ok(`RCPT TO:<${t}>`);
    await c.ok('DATA', 354);
    c.write(body.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..') + (body.endsWith('\n') ? '' : '\r\n') + '.\r\n');
    const r = await c.read();
    assert.ok(r !== null);
    await c.cmd('QUIT').catch(() => undefined);
    return r;
  } finally {
    c.close();
  }
}
