// SPDX-License-Identifier: MIT
// smtp-load: a small, bounded SMTP load client for the benchmarks that smtp-source cannot drive (it exits at
// the first 421 greeting, and its messages carry no Message-ID), plus the checker of what a sink received.
//
//   node bench/smtp-load.ts send   --port N [--clients 10] [--duration 20] [--messages 0] [--size 2048]
//                                  [--per-session 1] [--backoff 100] [--reply-timeout 30000] [--tag T] [--ids FILE]
//                                  [--timeline FILE]
//   node bench/smtp-load.ts verify --acked FILE --sink-dir DIR [--tag T] [--size 2048]
//
// send: CLIENTS concurrent clients, each in a loop until DURATION seconds have passed (or MESSAGES messages
// were acknowledged over all clients, 0 = no count limit): connect, read the greeting; on 220 EHLO and
// PER_SESSION messages (MAIL, RCPT, DATA, the message in one write, one reply), then QUIT; on any other
// greeting (421 past max_sessions) count it, close and try again after BACKOFF ms, as a refused client would;
// a session that ends in an error (4xx/5xx, reset, timeout) is also followed by BACKOFF ms before the next.
// Each message has a unique Message-ID <TAG-client-seq@bench.example> and a body that is a function of that
// ID and SIZE, so a sink's copy can be checked byte for byte. Prints one JSON line of counters at the end;
// --ids FILE gets the Message-ID of every message answered 250 after DATA, one per line. The process always
// ends by DURATION + 2 * REPLY_TIMEOUT + 5 s, whatever the server does. --timeline FILE gets one TSV line per
// second of the run: messages acknowledged, refused after DATA (4xx), greetings refused (421), sessions cut.
//
// verify: reads the dump files of `smtp-sink -d` under SINK_DIR (LF line ends, smtp-sink's X-* records and
// Received: field, then the message, then an empty line), and prints one JSON line: how many acknowledged IDs
// arrived, which are missing, duplicate copies, deliveries of messages never acknowledged (a crash between
// commit and the 250 may deliver those: allowed), and dumps whose body is not the one that was sent.

import { connect, type Socket } from 'node:net';
import { appendFileSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

type Opts = Record<string, string>;

function parseArgs(argv: string[]): { cmd: string; opts: Opts } {
  const [cmd = '', ...rest] = argv;
  const opts: Opts = {};
  for (let i = 0; i < rest.length; i++) {
    const k = rest[i]!;
    if (!k.startsWith('--') || i + 1 >= rest.length) throw new Error(`bad argument ${k}`);
    opts[k.slice(2)] = rest[++i]!;
  }
  return { cmd, opts };
}

const num = (o: Opts, k: string, d: number): number => {
  const v = o[k] === undefined ? d : Number(o[k]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${k} must be a number >= 0`);
  return v;
};

/** The body of message `id`: CRLF lines "<id> <n> xxx…" of 78 bytes with their CRLF, until at least `size` bytes. */
export function bodyFor(id: string, size: number): string {
  const lines: string[] = [];
  let len = 0;
  for (let n = 0; len < size || n === 0; n++) {
    const head = `${id} ${n} `;
    const line = head + 'x'.repeat(Math.max(0, 76 - head.length));
    lines.push(line);
    len += line.length + 2;
  }
  return lines.join('\r\n') + '\r\n';
}

function messageFor(id: string, size: number): string {
  return `Message-ID: <${id}>\r\nFrom: <bench@example.com>\r\nTo: <rcpt@example.net>\r\nSubject: ${id}\r\n\r\n${bodyFor(id, size)}`;
}

interface Reply { code: number; text: string }

/** One SMTP connection: replies in order, each with a timeout; null = closed (or reset, or timed out). */
class Conn {
  private buf = '';
  private lines: string[] = [];
  private readonly replies: Reply[] = [];
  private waiter: ((r: Reply | null) => void) | null = null;
  closed = false;
  private readonly sock: Socket;
  private constructor(sock: Socket) {
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on('data', (c: Buffer) => this.onData(c.toString('latin1')));
    sock.on('close', () => {
      this.closed = true;
      this.settle(null);
    });
    sock.on('error', () => undefined);
  }
  static open(port: number, timeoutMs: number): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1');
      const t = setTimeout(() => { s.destroy(); reject(new Error('connect timeout')); }, timeoutMs);
      s.once('connect', () => { clearTimeout(t); resolve(new Conn(s)); });
      s.once('error', (e) => { clearTimeout(t); reject(e); });
    });
  }
  private onData(s: string): void {
    this.buf += s;
    let nl: number;
    while ((nl = this.buf.indexOf('\r\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 2);
      this.lines.push(line);
      if (line.length < 4 || line[3] !== '-') {
        const r = { code: Number(this.lines[0]!.slice(0, 3)), text: this.lines.join(' | ') };
        this.lines = [];
        if (this.waiter !== null) this.settle(r);
        else this.replies.push(r);
      }
    }
  }
  private settle(r: Reply | null): void {
    const w = this.waiter;
    this.waiter = null;
    w?.(r);
  }
  read(timeoutMs: number): Promise<Reply | null> {
    const q = this.replies.shift();
    if (q !== undefined) return Promise.resolve(q);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      const t = setTimeout(() => { this.waiter = null; this.sock.destroy(); resolve(null); }, timeoutMs);
      this.waiter = (r) => { clearTimeout(t); resolve(r); };
    });
  }
  async cmd(line: string, timeoutMs: number): Promise<Reply | null> {
    this.sock.write(line + '\r\n');
    return this.read(timeoutMs);
  }
  write(s: string): void {
    this.sock.write(s, 'latin1');
  }
  close(): void {
    this.sock.destroy();
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function send(o: Opts): Promise<void> {
  const t0 = Date.now();
  const port = num(o, 'port', 0);
  if (port === 0) throw new Error('--port is required');
  const clients = num(o, 'clients', 10);
  const durationMs = num(o, 'duration', 20) * 1000;
  const maxMessages = num(o, 'messages', 0);
  const size = num(o, 'size', 2048);
  const perSession = Math.max(1, num(o, 'per-session', 1));
  const backoff = num(o, 'backoff', 100);
  const replyTimeout = num(o, 'reply-timeout', 30_000);
  const tag = o.tag ?? `b${process.pid}`;
  const idsFile = o.ids;
  if (idsFile !== undefined) writeFileSync(idsFile, '');
  // --timeline FILE: per second of the run, "second acked data_4xx greet_421 cut" (cut = session ended without
  // a reply: reset or closed), to see how long a dip lasts after a kill.
  const timelineFile = o.timeline;
  const timeline: number[][] = [];
  const tick = (col: number) => {
    const sec = Math.floor((Date.now() - t0) / 1000);
    while (timeline.length <= sec) timeline.push([0, 0, 0, 0]);
    timeline[sec]![col]!++;
  };

  const c = {
    connections: 0, connect_errors: 0, greet_220: 0, greet_421: 0, greet_other: 0, greet_none: 0,
    acked: 0, data_4xx: 0, data_5xx: 0, cmd_rejected: 0, lost_in_session: 0, no_reply_after_data: 0,
    in_session: 0, max_in_session: 0,
  };
  const otherReplies = new Map<string, number>();
  const latencies: number[] = []; // ms from MAIL to the 250 after DATA
  const ackedIds: string[] = [];
  const flushIds = () => {
    if (idsFile !== undefined && ackedIds.length > 0) appendFileSync(idsFile, ackedIds.splice(0).join('\n') + '\n');
  };
  const idsTimer = setInterval(flushIds, 1000);
  const end = t0 + durationMs;
  let reserved = 0; // messages started, for --messages
  const more = () => Date.now() < end && (maxMessages === 0 || reserved < maxMessages);
  const note = (r: Reply | null) => {
    const k = r === null ? 'closed' : r.text.slice(0, 60);
    otherReplies.set(k, (otherReplies.get(k) ?? 0) + 1);
  };

  // Whatever the server does, this process ends: DURATION, then at most two reply timeouts, then a margin.
  const hard = setTimeout(() => { report(true); process.exit(3); }, durationMs + 2 * replyTimeout + 5000);

  async function client(n: number): Promise<void> {
    let seq = 0;
    while (more()) {
      let conn: Conn;
      try {
        conn = await Conn.open(port, Math.min(replyTimeout, 10_000));
      } catch {
        c.connect_errors++;
        await sleep(backoff);
        continue;
      }
      c.connections++;
      let admitted = false;
      let failed = false; // the session ended in an error: back off before the next one, as a real client would
      try {
        const g = await conn.read(replyTimeout);
        if (g === null) { c.greet_none++; await sleep(backoff); continue; }
        if (g.code === 421) { c.greet_421++; tick(2); note(g); await sleep(backoff); continue; }
        if (g.code !== 220) { c.greet_other++; note(g); await sleep(backoff); continue; }
        c.greet_220++;
        admitted = true;
        c.max_in_session = Math.max(c.max_in_session, ++c.in_session);
        const e = await conn.cmd('EHLO client.bench.example', replyTimeout);
        if (e === null || e.code !== 250) { c.cmd_rejected++; note(e); failed = true; continue; }
        for (let k = 0; k < perSession && more(); k++) {
          reserved++;
          const id = `${tag}-${n}-${seq++}@bench.example`;
          const m0 = Date.now();
          const r1 = await conn.cmd('MAIL FROM:<bench@example.com>', replyTimeout);
          if (r1 === null) { c.lost_in_session++; tick(3); failed = true; break; }
          if (r1.code !== 250) { c.cmd_rejected++; note(r1); failed = true; break; }
          const r2 = await conn.cmd('RCPT TO:<rcpt@example.net>', replyTimeout);
          if (r2 === null) { c.lost_in_session++; tick(3); failed = true; break; }
          if (r2.code !== 250) { c.cmd_rejected++; note(r2); failed = true; break; }
          const r3 = await conn.cmd('DATA', replyTimeout);
          if (r3 === null) { c.lost_in_session++; tick(3); failed = true; break; }
          if (r3.code !== 354) { c.cmd_rejected++; note(r3); failed = true; break; }
          conn.write(messageFor(id, size) + '.\r\n');
          const r4 = await conn.read(replyTimeout);
          if (r4 === null) { c.no_reply_after_data++; tick(3); failed = true; break; } // may or may not have been committed: not owed
          if (r4.code === 250) {
            c.acked++;
            tick(0);
            latencies.push(Date.now() - m0);
            ackedIds.push(id);
          } else {
            if (r4.code >= 500) c.data_5xx++;
            else { c.data_4xx++; tick(1); }
            note(r4);
            failed = true;
            break;
          }
        }
        if (!conn.closed) await conn.cmd('QUIT', Math.min(replyTimeout, 5000));
      } finally {
        if (admitted) c.in_session--;
        conn.close();
      }
      if (failed) await sleep(backoff);
    }
  }

  let reported = false;
  function report(hardStop: boolean): void {
    if (reported) return;
    reported = true;
    clearInterval(idsTimer);
    flushIds();
    if (timelineFile !== undefined) writeFileSync(timelineFile, 'second\tacked\tdata_4xx\tgreet_421\tcut\n' + timeline.map((r, i) => `${i}\t${r.join('\t')}\n`).join(''));
    const elapsed = (Date.now() - t0) / 1000;
    const sorted = latencies.slice().sort((a, b) => a - b);
    const pct = (p: number) => (sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]);
    const { in_session: _unused, ...counters } = c;
    console.log(JSON.stringify({
      clients, duration_s: durationMs / 1000, elapsed_s: Number(elapsed.toFixed(2)), size, per_session: perSession, backoff_ms: backoff,
      ...counters, msgs_per_s: Number((c.acked / Math.max(elapsed, 0.001)).toFixed(1)),
      latency_ms: { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: sorted.at(-1) ?? null },
      other_replies: Object.fromEntries([...otherReplies].sort((a, b) => b[1] - a[1]).slice(0, 8)),
      hard_stop: hardStop,
    }));
  }

  await Promise.all(Array.from({ length: clients }, (_, n) => client(n)));
  clearTimeout(hard);
  report(false);
}

/** Every dump file under `dir` (smtp-sink -d may create subdirectories). */
function dumpFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    if (n.startsWith('.')) return [];
    const p = join(dir, n);
    return statSync(p).isDirectory() ? dumpFiles(p) : [p];
  });
}

function verify(o: Opts): void {
  const ackedFile = o.acked;
  const dir = o['sink-dir'];
  if (ackedFile === undefined || dir === undefined) throw new Error('--acked and --sink-dir are required');
  const size = num(o, 'size', 2048);
  const tagRe = o.tag === undefined ? /^[^@\s]+@bench\.example$/ : new RegExp(`^${o.tag.replace(/[^\w-]/g, '\\$&')}-\\d+-\\d+@bench\\.example$`);
  const acked = new Set(readFileSync(ackedFile, 'utf8').split('\n').filter((l) => l !== ''));
  const copies = new Map<string, number>();
  const badBody: string[] = [];
  const noId: string[] = [];
  const foreign: string[] = [];
  let dumps = 0;
  for (const f of dumpFiles(dir)) {
    dumps++;
    const text = readFileSync(f, 'latin1');
    const id = /^Message-ID: <([^>\n]+)>$/m.exec(text)?.[1];
    if (id === undefined) { noId.push(f); continue; }
    if (!tagRe.test(id)) { foreign.push(id); continue; }
    copies.set(id, (copies.get(id) ?? 0) + 1);
    // The dump ends with the header/body separator, the body as sent (LF line ends) and smtp-sink's empty line.
    const body = bodyFor(id, size).replace(/\r\n/g, '\n');
    if (!text.endsWith(`\n\n${body}\n`)) badBody.push(f);
  }
  const missing = [...acked].filter((id) => !copies.has(id));
  const dupIds = [...copies].filter(([, n]) => n > 1);
  const unackedDelivered = [...copies.keys()].filter((id) => !acked.has(id));
  console.log(JSON.stringify({
    acked: acked.size, dumps, delivered_distinct: copies.size, missing: missing.length, missing_examples: missing.slice(0, 10),
    duplicate_ids: dupIds.length, duplicate_copies: dupIds.reduce((s, [, n]) => s + n - 1, 0),
    delivered_not_acked: unackedDelivered.length, bad_body: badBody.length, bad_body_examples: badBody.slice(0, 5),
    no_message_id: noId.length, foreign_ids: foreign.length,
  }));
}

const { cmd, opts } = parseArgs(process.argv.slice(2));
if (cmd === 'send') await send(opts);
else if (cmd === 'verify') verify(opts);
else {
  console.error('usage: smtp-load.ts send --port N [...] | verify --acked FILE --sink-dir DIR [...]');
  process.exit(2);
}
