// SPDX-License-Identifier: MIT
// A scriptable SMTP (or LMTP) peer for delivery tests, on 127.0.0.1 port 0. It records every message it
// accepts (envelope with parameters, the dot-unstuffed bytes and the bytes as sent on the wire) and can be
// told to tempfail the first N transactions, reject given recipients, leave out extensions, or hang.
// Use it as Palisade's next hop with `[transport] "*" = "smtp:[127.0.0.1]:PORT"`.

import { createServer, type Server, type Socket } from 'node:net';

/** One recipient as received: address and the RCPT parameters ("NOTIFY" → "SUCCESS,FAILURE"). */
export interface PeerRecipient {
  readonly address: string;
  readonly params: Readonly<Record<string, string>>;
}

/** A message the peer accepted (for LMTP: accepted for at least one recipient). */
export interface PeerMessage {
  readonly from: string;
  /** MAIL FROM parameters, keys upper-case ("SIZE", "BODY", "RET", "ENVID", "SMTPUTF8" → ""). */
  readonly mailParams: Readonly<Record<string, string>>;
  /** Recipients accepted at RCPT (and, for LMTP, after DATA). */
  readonly rcpts: readonly PeerRecipient[];
  /** The message, dot-unstuffed, without the final ".". */
  readonly data: Buffer;
  /** The DATA bytes exactly as sent (dot-stuffed), including the final ".\r\n". */
  readonly wire: Buffer;
  /** Which connection (1-based) carried it. */
  readonly connection: number;
}

/** Which EHLO keywords to advertise (all on by default; `size` is the SIZE limit, 0 = advertised without one). */
export interface PeerExtensions {
  pipelining: boolean;
  dsn: boolean;
  size: number | false;
  eightbitmime: boolean;
  smtputf8: boolean;
}

/** What the peer does; every field may be changed while it runs (peer.script.x = ...). */
export interface PeerScript {
  /** LMTP (RFC 2033): LHLO instead of EHLO, one reply per recipient after the final dot. */
  lmtp: boolean;
  /** Name in the greeting (must differ from Palisade's hostname, or it sees a loop). */
  hostname: string;
  extensions: PeerExtensions;
  /** Accept the TCP connection and never say a word. */
  hang: boolean;
  /** Answer DATA with 354, then stop reading (the client's writes of the message must time out). */
  stallData: boolean;
  /** Recipients taken per transaction (0 = no limit); past it RCPT gets 452 4.5.3 (RFC 5321 §4.5.3.1.10). */
  maxRcpts: number;
  /** The reply after the final dot comes this long after the message was taken (it is recorded at once). */
  dataReplyDelayMs: number;
  /** The next N transactions get `tempfailReply` to every RCPT (counts down as they are used). */
  tempfailRcpt: number;
  /** The next N messages get `tempfailReply` after the final dot (counts down as they are used). */
  tempfailData: number;
  tempfailReply: string;
  /** Address (lower-case) → the full reply line to its RCPT, e.g. "550 5.1.1 No such user". */
  rcptReplies: Record<string, string>;
  /** LMTP only: address (lower-case) → the full reply line after the final dot for that recipient. */
  lmtpReplies: Record<string, string>;
}

/** A running peer. */
export interface SmtpPeer {
  /** TCP port on 127.0.0.1 (0 when listening on a Unix socket). */
  readonly port: number;
  readonly script: PeerScript;
  /** Messages accepted so far, in order. */
  readonly messages: PeerMessage[];
  /** Every command line received, in order, as "n> LINE" where n is the connection number. */
  readonly commands: string[];
  /** Connections accepted so far, and how many are open now. */
  readonly connections: { total: number; open: number; peak: number };
  /** Transactions begun (MAIL commands answered 250). */
  transactions(): number;
  /** Times a command line arrived together with further commands (the client pipelined, RFC 2920). */
  pipelined(): number;
  /** Resolves once at least `n` messages have arrived; rejects after `timeoutMs`. */
  waitMessages(n: number, timeoutMs?: number): Promise<PeerMessage[]>;
  /** Resolves once `n` connections have been accepted. */
  waitConnections(n: number, timeoutMs?: number): Promise<void>;
  /** Stops listening and destroys every connection. */
  close(): Promise<void>;
}

const DEFAULT_EXT: PeerExtensions = { pipelining: true, dsn: true, size: 10_000_000, eightbitmime: true, smtputf8: true };

/** Parses "<addr> K=V K2" into the address and upper-cased parameter keys. */
function parsePath(rest: string): { address: string; params: Record<string, string> } | null {
  const m = /^<([^>]*)>((?: +\S+)*) *$/.exec(rest);
  if (m === null) return null;
  const params: Record<string, string> = {};
  for (const p of m[2]!.trim().split(/ +/).filter((x) => x !== '')) {
    const eq = p.indexOf('=');
    if (eq < 0) params[p.toUpperCase()] = '';
    else params[p.slice(0, eq).toUpperCase()] = p.slice(eq + 1);
  }
  return { address: m[1]!, params };
}

/**
 * Starts a peer; `script` overrides the defaults (ESMTP with every extension, accepting everything).
 * With `path`, it listens on that Unix socket instead of a TCP port (for "lmtp:unix:/path" routes).
 */
export async function startSmtpPeer(
  opts: Partial<Omit<PeerScript, 'extensions'>> & { extensions?: Partial<PeerExtensions>; path?: string } = {},
): Promise<SmtpPeer> {
  const { path, ...script } = opts;
  const s: PeerScript = {
    lmtp: false,
    hostname: 'peer.test',
    hang: false,
    stallData: false,
    maxRcpts: 0,
    dataReplyDelayMs: 0,
    tempfailRcpt: 0,
    tempfailData: 0,
    tempfailReply: '451 4.3.0 Try again later',
    rcptReplies: {},
    lmtpReplies: {},
    ...script,
    extensions: { ...DEFAULT_EXT, ...script.extensions },
  };
  const messages: PeerMessage[] = [];
  const commands: string[] = [];
  const connections = { total: 0, open: 0, peak: 0 };
  const sockets = new Set<Socket>();
  let transactions = 0;
  let pipelined = 0;
  const listeners = new Set<() => void>();
  const changed = () => {
    for (const l of [...listeners]) l();
  };

  function session(sock: Socket): void {
    const conn = ++connections.total;
    connections.open++;
    connections.peak = Math.max(connections.peak, connections.open);
    sockets.add(sock);
    sock.on('error', () => {});
    sock.on('close', () => {
      connections.open--;
      sockets.delete(sock);
      changed();
    });
    changed();
    if (s.hang) return; // read nothing, say nothing: the client must time out

    let buf = '';
    let inData = false;
    let dataScanned = 0;
    let from: { address: string; params: Record<string, string> } | null = null;
    let rcpts: PeerRecipient[] = [];
    let failRcpt = false;
    let greeted = false;
    const send = (lines: string | string[]) => {
      if (!sock.destroyed) sock.write((Array.isArray(lines) ? lines : [lines]).map((l) => l + '\r\n').join(''));
    };
    const reset = () => {
      from = null;
      rcpts = [];
      failRcpt = false;
    };

    send(`220 ${s.hostname} ${s.lmtp ? 'LMTP' : 'ESMTP'} test peer`);

    function ehlo(verb: string): void {
      const ext = s.extensions;
      const kw = [
        ...(ext.pipelining ? ['PIPELINING'] : []),
        ...(ext.size !== false ? [ext.size > 0 ? `SIZE ${ext.size}` : 'SIZE'] : []),
        ...(ext.eightbitmime ? ['8BITMIME'] : []),
        ...(ext.dsn ? ['DSN'] : []),
        ...(ext.smtputf8 ? ['SMTPUTF8'] : []),
        'ENHANCEDSTATUSCODES',
      ];
      const all = [`${s.hostname} greets you (${verb})`, ...kw];
      send(all.map((l, i) => `250${i === all.length - 1 ? ' ' : '-'}${l}`));
      greeted = true;
      reset();
    }

    function command(line: string): void {
      commands.push(`${conn}> ${line}`);
      const verb = line.split(' ', 1)[0]!.toUpperCase();
      const rest = line.slice(verb.length).trim();
      switch (verb) {
        case 'EHLO':
        case 'HELO':
          if (s.lmtp) return send('500 5.5.1 LMTP: say LHLO');
          if (verb === 'HELO') {
            greeted = true;
            return send(`250 ${s.hostname}`);
          }
          return ehlo(verb);
        case 'LHLO':
          if (!s.lmtp) return send('500 5.5.1 Unknown command');
          return ehlo(verb);
        case 'MAIL': {
          if (!greeted) return send('503 5.5.1 Say hello first');
          if (from !== null) return send('503 5.5.1 Nested MAIL');
          const p = /^FROM:(.*)$/i.exec(rest);
          const path = p ? parsePath(p[1]!.trim()) : null;
          if (path === null) return send('501 5.5.4 Syntax: MAIL FROM:<address>');
          from = path;
          transactions++;
          failRcpt = s.tempfailRcpt > 0;
          if (failRcpt) s.tempfailRcpt--;
          changed();
          return send('250 2.1.0 Ok');
        }
        case 'RCPT': {
          if (from === null) return send('503 5.5.1 Need MAIL first');
          const p = /^TO:(.*)$/i.exec(rest);
          const path = p ? parsePath(p[1]!.trim()) : null;
          if (path === null) return send('501 5.5.4 Syntax: RCPT TO:<address>');
          if (failRcpt) return send(s.tempfailReply);
          const scripted = s.rcptReplies[path.address.toLowerCase()];
          if (scripted !== undefined) return send(scripted);
          if (s.maxRcpts > 0 && rcpts.length >= s.maxRcpts) return send('452 4.5.3 Too many recipients');
          rcpts.push(path);
          return send('250 2.1.5 Ok');
        }
        case 'DATA':
          if (from === null) return send('503 5.5.1 Need MAIL first');
          if (rcpts.length === 0) return send('554 5.5.1 No valid recipients');
          inData = true;
          send('354 End data with <CR><LF>.<CR><LF>');
          if (s.stallData) sock.pause();
          return;
        case 'RSET':
          reset();
          return send('250 2.0.0 Ok');
        case 'NOOP':
          return send('250 2.0.0 Ok');
        case 'QUIT':
          send('221 2.0.0 Bye');
          sock.end();
          return;
        default:
          return send('500 5.5.2 Unknown command');
      }
    }

    function endOfData(wire: Buffer): void {
      const text = wire.toString('latin1');
      // Undo dot-stuffing (RFC 5321 §4.5.2) and drop the final ".\r\n".
      const body = text.slice(0, text.length - 3).replace(/(^|\r\n)\./g, '$1');
      const data = Buffer.from(body, 'latin1');
      const failData = s.tempfailData > 0;
      if (failData) s.tempfailData--;
      const got = { from: from!.address, mailParams: from!.params, data, wire, connection: conn };
      if (s.lmtp) {
        // RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
        const ok: PeerRecipient[] = [];
        const replies = rcpts.map((r) => {
          const rep = failData ? s.tempfailReply : s.lmtpReplies[r.address.toLowerCase()] ?? '250 2.0.0 Delivered';
          if (rep.startsWith('2')) ok.push(r);
          return rep;
        });
        if (ok.length > 0) messages.push({ ...got, rcpts: ok });
        send(replies);
      } else if (failData) {
        send(s.tempfailReply);
      } else {
        messages.push({ ...got, rcpts });
        const ok = `250 2.0.0 Ok: queued as M${messages.length}`;
        if (s.dataReplyDelayMs > 0) setTimeout(() => send(ok), s.dataReplyDelayMs);
        else send(ok);
      }
      reset();
      changed();
    }

    sock.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      for (;;) {
        if (inData) {
          // The end is CRLF "." CRLF, where the first CRLF may be the one that ended the DATA command.
          const text = '\r\n' + buf;
          const end = text.indexOf('\r\n.\r\n', Math.max(0, dataScanned - 4));
          if (end < 0) {
            dataScanned = text.length;
            return;
          }
          const stop = end + 3; // in buf: through the final ".\r\n"
          const wire = Buffer.from(buf.slice(0, stop), 'latin1');
          buf = buf.slice(stop);
          inData = false;
          dataScanned = 0;
          endOfData(wire);
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (buf.length > 0) pipelined++;
        command(Buffer.from(line, 'latin1').toString('utf8'));
      }
    });
  }

  const server: Server = createServer(session);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (path !== undefined) server.listen(path, () => resolve());
    else server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = path !== undefined ? 0 : (server.address() as { port: number }).port;

  function until<T>(what: string, cond: () => T | undefined, timeoutMs: number): Promise<T> {
    const now = cond();
    if (now !== undefined) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const check = () => {
        const v = cond();
        if (v === undefined) return;
        clearTimeout(t);
        listeners.delete(check);
        resolve(v);
      };
      const t = setTimeout(() => {
        listeners.delete(check);
        reject(new Error(`timeout waiting for ${what} (peer has ${messages.length} messages, ${connections.total} connections)`));
      }, timeoutMs);
      listeners.add(check);
    });
  }

  return {
    port,
    script: s,
    messages,
    commands,
    connections,
    transactions: () => transactions,
    pipelined: () => pipelined,
    waitMessages: (n, timeoutMs = 15_000) => until(`${n} messages`, () => (messages.length >= n ? messages : undefined), timeoutMs),
    waitConnections: (n, timeoutMs = 15_000) => until(`${n} connections`, () => (connections.total >= n ? true : undefined), timeoutMs).then(() => {}),
    close: () =>
      new Promise<void>((resolve) => {
        for (const sock of sockets) sock.destroy();
        server.close(() => resolve());
      }),
  };
}
