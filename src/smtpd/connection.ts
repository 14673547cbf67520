// SPDX-License-Identifier: MIT
// Connection: the one I/O loop per client. Reads command lines (bounded, CRLF only), calls the session's
// handlers in order, batches replies for pipelining (RFC 2920), and streams DATA/BDAT bodies to cleanup
// with backpressure. Never holds a whole message in memory.

import type { Socket } from 'node:net';
import type { Logger } from '../log/index.ts';
import { formatReply, R, reply, type Reply } from '../core/reply.ts';
import { MAX_COMMAND_LINE, parseCommand, takeLine } from './parser.ts';
import { BdatBody, Chunking, DataBody, type Fed } from './body.ts';
import { CleanupTransaction, type CleanupPool, type CleanupResult } from './cleanup-client.ts';
import {
  canStartBody, envelopeOf, greeting, hello, mail, newSession, rcpt, resetTransaction,
  type Session, type SessionLimits,
} from './session.ts';
import type { RecipientPolicy } from './relay.ts';

// Unprocessed input kept while a command runs (pipelining); past it the socket is paused.
const MAX_PENDING_INPUT = 256 * 1024;

/** Everything a connection needs, passed in by the server. */
export interface ConnectionDeps {
  readonly limits: SessionLimits;
  readonly policy: RecipientPolicy;
  /** Connections to cleanup (private/cleanup), shared by the process's sessions. */
  readonly cleanup: CleanupPool;
  readonly log: Logger;
  readonly maxErrors: number;
  readonly timeoutMs: number;
  /** Stress mode (from master): shorter timeout, fewer errors tolerated. */
  readonly stressMaxErrors: number;
  readonly stressTimeoutMs: number;
  readonly flags: { readonly stress: boolean; readonly diskLow: boolean };
  /** Per-IP message rate check (true at once for an exempt client), or null when unlimited. */
  readonly messageRate: ((ip: string) => true | Promise<boolean>) | null;
  /** Per-IP recipient rate check (true at once for an exempt client), or null when unlimited. */
  readonly recipientRate: ((ip: string) => true | Promise<boolean>) | null;
}

type Mode = 'cmd' | 'data' | 'bdat' | 'closed';

/** One SMTP session over `sock`; call start() once the client is admitted. */
export class Connection {
  private readonly sock: Socket;
  private readonly deps: ConnectionDeps;
  private readonly session: Session;
  private buf: Buffer = Buffer.alloc(0);
  private mode: Mode = 'cmd';
  private busy = false;
  private discarding = false;
  private out = '';
  private errors = 0;
  // The open transaction's body: DATA's while in data mode; BDAT's from its first chunk to its LAST.
  private body: DataBody | BdatBody | null = null;
  private readonly chunking = new Chunking();
  private stopping = false;
  private readonly started = Date.now();
  private timeoutMs = 0;
  private lineStart = 0;
  /** Called once when the connection is gone. */
  onClose: (() => void) | null = null;

  constructor(sock: Socket, deps: ConnectionDeps) {
    this.sock = sock;
    this.deps = deps;
    this.session = newSession(normalizeIp(sock.remoteAddress ?? ''), sock.remotePort ?? 0);
    sock.setNoDelay(true);
    sock.on('error', () => this.close());
    sock.on('close', () => this.close());
    // The client's end of input (its FIN; the listeners allow half-open sockets): what it sent before is still
    // answered, then the session ends, instead of dropping the replies still owed.
    sock.on('end', () => {
      this.inputEnded = true;
      if (!this.busy) this.afterInputEnded();
    });
  }

  private inputEnded = false;

  private afterInputEnded(): void {
    if (this.mode === 'closed') return;
    // Not admitted yet (no greeting): nothing is owed; close as for a client that went away.
    if (!this.greeted) return this.close();
    this.flush();
    this.finish();
    this.sock.end();
  }

  private greeted = false;

  /** Client IP as used for policy decisions. */
  get ip(): string {
    return this.session.ip;
  }

  /** Sends the greeting and starts reading. */
  start(): void {
    this.greeted = true;
    this.timeoutMs = this.currentTimeout();
    // After our closing reply a client that never closes its side is cut at the next timeout.
    this.sock.setTimeout(this.timeoutMs, () => (this.mode === 'closed' ? this.close() : this.fail(R.timeout, 'timeout')));
    this.sock.on('data', (chunk: Buffer) => this.onData(chunk));
    this.send(greeting(this.deps.limits));
    this.flush();
    this.deps.log.info({ event: 'connect', client: this.session.ip, port: this.session.port });
  }

  /** Refuses the client before any dialogue (limits) and closes. */
  refuse(r: Reply): void {
    this.mode = 'closed';
    this.sock.end(formatReply(r));
    this.sock.destroySoon();
  }

  /** Ends the session for shutdown: at once when idle, else after the current command. */
  shutdown(force: boolean): void {
    this.stopping = true;
    if (force || (!this.busy && this.idle())) this.fail(R.shuttingDown, 'shutdown');
  }

  // Between transactions: nothing would be lost by closing now.
  private idle(): boolean {
    return this.mode === 'cmd' && this.session.sender === undefined && this.chunking.failed === null;
  }

  private currentTimeout(): number {
    return this.deps.flags.stress ? Math.min(this.deps.stressTimeoutMs, this.deps.timeoutMs) : this.deps.timeoutMs;
  }

  private onData(chunk: Buffer): void {
    if (this.mode === 'closed') return;
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    // A command line must be complete within one timeout of its first byte, however slowly it trickles in
    // (the socket timeout alone restarts with every byte: the slow-loris hole).
    if (this.mode === 'cmd' && !this.busy) {
      const now = Date.now();
      if (this.buf.indexOf(0x0a) >= 0) this.lineStart = 0;
      else if (this.lineStart === 0) this.lineStart = now;
      else if (now - this.lineStart > this.timeoutMs) return this.fail(R.timeout, 'command line deadline');
    }
    if (this.busy) {
      if (this.buf.length > MAX_PENDING_INPUT) this.sock.pause();
      return;
    }
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (this.mode !== 'closed') {
        // A feed that waited for cleanup to drain may return with more input buffered meanwhile: no new
        // 'data' event will come for it, so go round again instead of stopping.
        if (this.mode === 'data' || this.mode === 'bdat') {
          const data = this.mode === 'data';
          const done = await this.feedBody();
          // The session may have ended while the body waited for cleanup (the client went away, a timeout,
          // a forced shutdown): nothing more is read or answered.
          if ((this.mode as Mode) === 'closed') break;
          if (!done) {
            if (this.buf.length > 0) continue;
            break;
          }
          await (data ? this.finishData() : this.finishBdatChunk());
          continue;
        }
        const line = this.nextLine();
        if (line === null) break;
        if (line === true) continue;
        // Awaited only when the command had to wait (a rate check with master): an await costs a turn of the
        // event loop's tick queue, run only after Node's own stream bookkeeping for this read, before the
        // reply could go out.
        const waiting = this.command(line);
        if (waiting instanceof Promise) {
          // The replies so far (a 250 for a message, say) go out now, not after the wait.
          this.flush();
          await waiting;
        }
        // Stress mode changes the timeout of sessions already running, too.
        const t = this.currentTimeout();
        if (t !== this.timeoutMs) {
          this.timeoutMs = t;
          this.sock.setTimeout(t);
        }
        if (this.stopping && this.idle()) {
          this.fail(R.shuttingDown, 'shutdown');
          break;
        }
      }
    } catch (e) {
      this.deps.log.error({ event: 'session-error', client: this.session.ip, err: (e as Error).message });
      this.fail(R.localError, 'internal error');
    } finally {
      this.busy = false;
      this.flush();
      if (this.inputEnded) this.afterInputEnded();
      else if (this.sock.isPaused() && this.buf.length <= MAX_PENDING_INPUT && this.mode !== 'closed') this.sock.resume();
    }
  }

  // Returns a command line, true when a line was consumed with a reply already queued, or null for "need more".
  private nextLine(): string | true | null {
    const t = takeLine(this.buf, this.discarding);
    if (t.kind === 'none') {
      if (this.buf.length > MAX_COMMAND_LINE) {
        // Overlong: drop what we have and keep dropping to the next LF, then answer once.
        this.discarding = true;
        this.buf = Buffer.alloc(0);
      }
      return null;
    }
    this.buf = t.rest;
    this.discarding = false;
    if (t.kind === 'line') return t.line;
    this.error(t.reply);
    return true;
  }

  // Answers one command; returns a promise only when the answer has to wait (the per-IP rate checks).
  private command(line: string): Promise<void> | void {
    const { verb, args } = parseCommand(line);
    const s = this.session;
    const l = this.deps.limits;
    switch (verb) {
      case 'EHLO':
      case 'HELO': {
        const r = hello(s, l, verb, args);
        if (r.code === 250) this.discardBody();
        return this.answer(r);
      }
      case 'MAIL': {
        if (this.deps.flags.diskLow) return this.answer(R.noStorage);
        const r = mail(s, l, args);
        const checked = r.code === 250 && this.deps.messageRate !== null ? this.deps.messageRate(s.ip) : true;
        if (checked === true) return this.answer(r);
        return checked.then((ok) => {
          if (ok) return this.answer(r);
          resetTransaction(s);
          this.answer(R.messageRate);
        });
      }
      case 'RCPT': {
        const before = s.recipients.length;
        const r = rcpt(s, l, this.deps.policy, args);
        const checked = s.recipients.length > before && this.deps.recipientRate !== null ? this.deps.recipientRate(s.ip) : true;
        if (checked === true) return this.answer(r);
        return checked.then((ok) => {
          if (ok) return this.answer(r);
          s.recipients.pop();
          this.answer(R.recipientRate);
        });
      }
      case 'DATA':
        return this.startData(args);
      case 'BDAT':
        return this.startBdat(args);
      case 'RSET':
        if (args.trim() !== '') return this.answer(R.noParams);
        resetTransaction(s);
        this.discardBody();
        return this.answer(R.resetOk);
      case 'NOOP':
        return this.answer(R.noop);
      case 'QUIT':
        this.send(R.bye);
        this.flush();
        this.mode = 'closed';
        // The session is over now: release its slot at once rather than when the socket has closed, so the
        // shared count does not run ahead of the real sessions when clients reconnect quickly.
        this.finish();
        // Close as soon as the 221 is with the kernel (it still goes out, then the FIN), as Postfix does: waiting
        // for the client's own close costs a wake-up, a read and, from clients that reset instead, an error
        // object with its stack trace per connection.
        // Not while reading is paused (input left unread in the kernel would turn the close into a reset).
        if (this.sock.writableLength === 0 && !this.sock.isPaused()) this.sock.destroy();
        else this.endSoon();
        return;
      case 'VRFY':
      case 'EXPN':
        // RFC 5321 §3.5.3: 252 without revealing whether the user (or list) exists.
        return this.answer(args.trim() === '' ? R.syntax : verb === 'VRFY' ? R.vrfy : R.expn);
      case 'HELP':
        return this.answer(R.help);
      case 'STARTTLS':
      case 'AUTH':
      case 'TURN':
      case 'ETRN':
        return this.answer(R.notImplemented);
      default:
        return this.answer(R.unknownCommand);
    }
  }

  // RSET, EHLO and HELO end the transaction (RFC 5321 §4.1.1.5): BDAT chunks already taken go with it, so a
  // later transaction can never inherit their bytes or their envelope.
  private discardBody(): void {
    this.abandonBody();
    this.chunking.failed = null;
  }

  // Aborts the open transaction's body at cleanup, if there is one.
  private abandonBody(): void {
    this.body?.tx.abort();
    this.body = null;
  }

  // DATA: 354 when the transaction may take a body (RFC 5321 §4.1.1.4), then the body is read.
  private startData(args: string): void {
    if (args.trim() !== '') return this.answer(R.noParams);
    const refusal = canStartBody(this.session, 'DATA');
    if (refusal !== null) return this.answer(refusal);
    this.session.bodyMode = 'DATA';
    this.body = new DataBody(this.transaction(), this.deps.limits.maxMessageSize);
    this.mode = 'data';
    this.send(R.startData);
    this.flush();
  }

  // The session's envelope goes to cleanup as a new message.
  private transaction(): CleanupTransaction {
    return new CleanupTransaction(this.deps.cleanup, envelopeOf(this.session));
  }

  // Feeds buffered input to the body (DATA) or the current chunk (BDAT); true when it is complete.
  private async feedBody(): Promise<boolean> {
    if (this.buf.length === 0 && this.mode === 'data') return false;
    const fed: Fed = this.mode === 'data'
      ? (this.body as DataBody).push(this.buf)
      : this.chunking.push(this.buf, this.body as BdatBody | null);
    this.buf = fed.rest;
    if (fed.wait !== null) {
      this.flush();
      await fed.wait;
    }
    return fed.done;
  }

  // The end of data was read: the message's one answer.
  private async finishData(): Promise<void> {
    const body = this.body!;
    this.mode = 'cmd';
    this.body = null;
    const r = await this.endBody(body);
    resetTransaction(this.session);
    this.answer(r);
  }

  // BDAT: a chunk of the given size follows (RFC 3030); the first one of a transaction opens its body.
  private startBdat(args: string): void {
    const started = this.chunking.start(args, this.body as BdatBody | null, () => {
      const refusal = canStartBody(this.session, 'BDAT');
      if (refusal !== null) return refusal;
      this.session.bodyMode = 'BDAT';
      return new BdatBody(this.transaction(), this.deps.limits.maxMessageSize);
    });
    if (!started.ok) {
      // The chunk size is unknown, so its bytes cannot be skipped safely: close (no command smuggling).
      this.send(reply(501, '5.5.4', 'Syntax: BDAT chunk-size [LAST]; closing connection', true));
      this.flush();
      this.mode = 'closed';
      this.sock.end();
      return;
    }
    this.body = started.body;
    this.mode = 'bdat';
  }

  // A chunk was read: its answer, and after LAST (or a refusal) the transaction's end.
  private async finishBdatChunk(): Promise<void> {
    this.mode = 'cmd';
    const body = this.body as BdatBody | null;
    const f = this.chunking.finish(body);
    if (!f.end) {
      if (f.abandon) this.abandonBody();
      if (f.over) resetTransaction(this.session);
      return this.answer(f.answer);
    }
    this.body = null;
    const r = await this.endBody(body!);
    resetTransaction(this.session);
    this.answer(r);
  }

  // The body is complete: refused, or committed by cleanup (the replies owed so far go out before the wait).
  private async endBody(body: DataBody | BdatBody): Promise<Reply> {
    const refusal = body.verdict();
    if (refusal !== null) {
      body.tx.abort();
      this.deps.log.info({ event: 'reject', client: this.session.ip, code: refusal.reply.code, dsn: refusal.reply.enhanced, reason: refusal.reason });
      return refusal.reply;
    }
    this.flush();
    return this.queued(await body.tx.end(), body.size);
  }

  private queued(res: CleanupResult, size: number): Reply {
    if (!res.ok) {
      this.deps.log.warn({ event: 'reject', client: this.session.ip, code: res.reply.code, dsn: res.reply.enhanced, reason: res.reason });
      return res.reply;
    }
    this.session.messages++;
    this.afterReply.push({ event: 'queued', qid: res.qid, client: this.session.ip, from: envelopeSender(this.session), nrcpt: this.session.recipients.length, size });
    return reply(250, '2.0.0', `Ok: queued as ${res.qid}`);
  }

  private answer(r: Reply): void {
    if (r.code >= 400) this.error(r);
    else this.send(r);
  }

  private error(r: Reply): void {
    this.send(r);
    if (r.close) return;
    this.errors++;
    if (this.errors >= (this.deps.flags.stress ? this.deps.stressMaxErrors : this.deps.maxErrors)) {
      this.send(R.tooManyErrors);
    }
  }

  private send(r: Reply): void {
    if (this.mode === 'closed') return;
    this.out += formatReply(r);
    if (r.close) {
      this.flush();
      this.mode = 'closed';
      this.endSoon();
    }
  }

  // Ends our side after the last reply; a client that never closes its own is cut one timeout later (its
  // session slot is held until then). The socket's idle timer does not fire again by itself.
  private endSoon(): void {
    this.sock.end();
    const t = setTimeout(() => this.close(), this.timeoutMs);
    t.unref();
    this.sock.once('close', () => clearTimeout(t));
  }

  // Log lines about what the replies being flushed answer: written after the replies, so that their cost is
  // not part of the client's wait.
  private afterReply: object[] = [];

  private flush(): void {
    if (this.out !== '' && !this.sock.destroyed) {
      this.sock.write(this.out);
    }
    this.out = '';
    this.logAfterReply();
  }

  private logAfterReply(): void {
    if (this.afterReply.length === 0) return;
    const lines = this.afterReply;
    this.afterReply = [];
    for (const line of lines) this.deps.log.info(line);
  }

  private fail(r: Reply, why: string): void {
    if (this.mode === 'closed') return;
    this.abandonBody();
    this.deps.log.info({ event: 'drop', client: this.session.ip, reason: why });
    this.send(r.close ? r : { ...r, close: true });
  }

  private close(): void {
    this.finish();
    if (!this.sock.destroyed) this.sock.destroy();
  }

  // Ends the session's bookkeeping once: abandons an open transaction, logs, releases the slot.
  private finish(): void {
    this.abandonBody();
    this.mode = 'closed';
    if (this.onClose !== null) {
      const cb = this.onClose;
      this.onClose = null;
      // Lines about replies not flushed yet (the session ended while a command waited) come before its end.
      this.logAfterReply();
      this.deps.log.info({ event: 'disconnect', client: this.session.ip, messages: this.session.messages, errors: this.errors, seconds: (Date.now() - this.started) / 1000 });
      cb();
    }
  }
}

function envelopeSender(s: Session): string {
  return s.sender ? `${s.sender.local}@${s.sender.domain}` : '';
}

/** "::ffff:1.2.3.4" → "1.2.3.4" so policy and logs see the IPv4 address. */
export function normalizeIp(ip: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return m !== null ? m[1]! : ip;
}
