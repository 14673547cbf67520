// SPDX-License-Identifier: MIT
// cleanup: receives messages on private/cleanup (envelope, streamed body; one at a time per connection, which
// smtpd keeps open between messages), enforces header limits, adds Received:, writes the queue file and fsyncs
// it, and only then answers {ok, qid}.
// Must not: speak SMTP to clients or deliver anything. It is the only writer of queue/tmp and queue/incoming.

import { createServer, type Server, type Socket } from 'node:net';
import type { Config } from '../config/index.ts';
import type { Logger } from '../log/index.ts';
import type { Envelope } from '../core/envelope.ts';
import { R, type Reply } from '../core/reply.ts';
import { encodeJson, FrameDecoder, type Frame } from '../ipc/index.ts';
import type { QueueStore, QueueWriter } from '../queue/index.ts';
import { HeaderScanner, rfc5322Date } from './headers.ts';

export { HeaderScanner, rfc5322Date } from './headers.ts';

/** What cleanup needs from outside. */
export interface CleanupDeps {
  readonly log: Logger;
  readonly store: QueueStore;
  /** Called after each commit (qmgr is told so delivery starts at once). */
  readonly onCommit?: (qid: string) => void;
}

/** A running cleanup service. */
export interface Cleanup {
  /** Listens on `path` (a Unix socket). */
  listen(path: string): Promise<void>;
  /** Applies a reloaded config to messages that start from now on. */
  reconfigure(cfg: Config): void;
  close(): Promise<void>;
}

/** Creates the cleanup service. */
export function createCleanup(deps: CleanupDeps, initial: Config): Cleanup {
  let cfg = initial;
  let limits = limitsOf(cfg);
  // Defence in depth: smtpd enforces the size; cleanup refuses anything clearly past it too.
  let hardMax = cfg.smtp.max_message_size + 64 * 1024;
  let server: Server | null = null;

  // Connections carry one message after another (smtpd pools them). `idle` = between messages.
  const sockets = new Map<Socket, { idle: boolean }>();
  let closing = false;

  function handle(sock: Socket): void {
    const state = { idle: true };
    sockets.set(sock, state);
    const dec = new FrameDecoder({ streamData: true });
    let writer: QueueWriter | null = null;
    let envelope: Envelope | null = null;
    let scanner: HeaderScanner | null = null;
    // The current message is over (refused or aborted): ignore its remaining frames; the connection ends.
    let finished = false;
    let chain: Promise<void> = Promise.resolve();
    let pending = 0;

    const refuse = (r: Reply, reason: string) => {
      finished = true;
      void writer?.abort();
      deps.log.info({ event: 'reject', qid: writer?.id, code: r.code, dsn: r.enhanced, reason });
      // After a refusal smtpd may still be sending this message's frames: this connection is not reused.
      if (!sock.destroyed) sock.end(encodeJson({ ok: false, code: r.code, enhanced: r.enhanced, text: r.lines.join('\n'), reason }));
    };

    // Handles one frame; returns a promise only when it has to wait (a write or commit on the thread pool).
    function frame(f: Frame): Promise<void> | void {
      if (finished) return;
      if (writer === null) {
        if (f.kind !== 'json') return refuse(R.localError, 'protocol: expected begin');
        const msg = JSON.parse(f.payload.toString('utf8')) as { type: string; envelope: Envelope };
        if (msg.type !== 'begin' || typeof msg.envelope !== 'object') return refuse(R.localError, 'protocol: expected begin');
        state.idle = false;
        envelope = msg.envelope;
        const arrival = new Date();
        writer = deps.store.create(envelope, arrival);
        scanner = new HeaderScanner(limits);
        return writer.write(Buffer.from(receivedHeader(cfg.server.hostname, writer.id, envelope, arrival), 'utf8'));
      }
      switch (f.kind) {
        case 'data': {
          const r = scanner!.push(f.payload);
          if (r !== null) return refuse(r, 'header limits');
          if (writer.size + f.payload.length > hardMax) return refuse(R.tooBig, 'message too large');
          return writer.write(f.payload);
        }
        case 'end': {
          finished = true;
          const w = writer;
          const waiting = w.commit();
          if (waiting instanceof Promise) return waiting.then(() => answerCommitted(w));
          return answerCommitted(w);
        }
        case 'abort':
          finished = true;
          return writer.abort().then(() => void sock.end());
        default:
          return refuse(R.localError, 'protocol: unexpected frame');
      }
    }

    // The message is in the queue: the answer, then its log line and qmgr's notice.
    function answerCommitted(w: QueueWriter): void {
      const qid = w.id;
      const line = {
        event: 'committed', qid, from: envelope!.sender, nrcpt: envelope!.recipients.length,
        size: w.size, ...(scanner!.messageId ? { message_id: scanner!.messageId } : {}),
      };
      // Ready for the connection's next message before the answer lets smtpd send one.
      writer = null;
      envelope = null;
      scanner = null;
      finished = false;
      state.idle = true;
      if (!sock.destroyed) {
        const a = encodeJson({ ok: true, qid });
        if (closing) sock.end(a);
        else sock.write(a);
      }
      // Logged after the answer: its cost is not part of smtpd's wait.
      deps.log.info(line);
      deps.onCommit?.(qid);
    }

    const failed = (e: Error) => {
      deps.log.error({ event: 'write-error', qid: writer?.id, err: e.message });
      refuse(R.localError, `queue write failed: ${(e as NodeJS.ErrnoException).code ?? e.message}`);
    };
    const settled = () => {
      pending--;
      if (pending < 4 && sock.isPaused()) sock.resume();
    };

    sock.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = dec.push(chunk);
      } catch {
        refuse(R.localError, 'protocol: bad frame');
        return;
      }
      for (const f of frames) {
        pending++;
        if (pending > 1) {
          // Frames before it still wait: in order, after them.
          chain = chain.then(() => frame(f)).catch(failed).finally(settled);
          continue;
        }
        // Nothing before it: handled now, in this turn of the event loop (a whole small message, from its
        // first frame to the answer, without an await when the disk write can be synchronous); it goes on
        // the chain only if it has to wait.
        let waiting: Promise<void> | void;
        try {
          waiting = frame(f);
        } catch (e) {
          failed(e as Error);
          waiting = undefined;
        }
        if (waiting instanceof Promise) chain = waiting.catch(failed).finally(settled);
        else settled();
      }
      if (pending >= 16) sock.pause();
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      sockets.delete(sock);
      // smtpd went away before "end": the message was never acknowledged; drop the partial file.
      chain = chain.then(async () => {
        if (!finished && writer !== null) {
          finished = true;
          await writer.abort();
        }
      });
    });
  }

  return {
    reconfigure(next: Config): void {
      cfg = next;
      limits = limitsOf(next);
      hardMax = next.smtp.max_message_size + 64 * 1024;
    },
    listen(path: string): Promise<void> {
      return new Promise((resolve, reject) => {
        server = createServer(handle);
        server.once('error', reject);
        server.listen(path, () => resolve());
      });
    },
    close(): Promise<void> {
      return new Promise((resolve) => {
        if (server === null) return resolve();
        closing = true;
        server.close(() => resolve());
        // Idle connections end now; one carrying a message ends after its answer (smtpd ends its
        // transactions before cleanup is stopped). Whatever is left after 5 s is cut.
        for (const [s, st] of sockets) if (st.idle) s.end();
        setTimeout(() => {
          for (const s of sockets.keys()) s.destroy();
        }, 5000).unref();
      });
    },
  };
}

function limitsOf(cfg: Config) {
  return { maxHeaderSize: cfg.smtp.max_header_size, maxHeaders: cfg.smtp.max_headers, maxReceived: cfg.smtp.max_received_headers };
}

/** The Received: field cleanup prepends (RFC 5321 §4.4, RFC 5322 §3.6.7). */
export function receivedHeader(hostname: string, qid: string, env: Envelope, when: Date): string {
  const c = env.client;
  const helo = c.helo === '' ? 'unknown' : c.helo.replace(/[()\\]/g, '');
  const forClause = env.recipients.length === 1 ? `\r\n\tfor <${env.recipients[0]!.address}>` : '';
  return `Received: from ${helo} ([${c.ip}])\r\n\tby ${hostname} (Palisade) with ${c.protocol} id ${qid}${forClause};\r\n\t${rfc5322Date(when)}\r\n`;
}
