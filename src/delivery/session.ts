// SPDX-License-Identifier: MIT
// ClientSession: one outbound SMTP or LMTP connection (RFC 5321, RFC 2033): greeting, EHLO/LHLO (HELO
// fallback), then transactions with PIPELINING when offered, SIZE/8BITMIME/SMTPUTF8/DSN parameters, and
// per-recipient outcomes. Reusable across messages to the same destination.

import { connect, type Socket } from 'node:net';
import type { DeliveryJob, RecipientResult } from '../core/delivery.ts';
import { ConnectionError, ReplyReader, replyLine, type ServerReply } from './client.ts';
import { dotStuff, messageChunks } from './message.ts';
import { readHeaderSection } from '../queue/index.ts';

/** RFC 5321 §4.5.3.2 timeouts in milliseconds. */
export interface StageTimeouts {
  readonly greeting: number;
  readonly mail: number;
  readonly rcpt: number;
  readonly dataInit: number;
  readonly dataBlock: number;
  readonly dataDone: number;
}

/** RFC 5321 §4.5.3.2 defaults: 5 min, 5 min, 5 min, 2 min, 3 min, 10 min. */
export function stageTimeouts(single: number | null): StageTimeouts {
  if (single !== null) return { greeting: single, mail: single, rcpt: single, dataInit: single, dataBlock: single, dataDone: single };
  return { greeting: 300_000, mail: 300_000, rcpt: 300_000, dataInit: 120_000, dataBlock: 180_000, dataDone: 600_000 };
}

/** Where to connect. */
export type Endpoint = { readonly host: string; readonly port: number; readonly name: string } | { readonly path: string; readonly name: string };

/** Options of a session. */
export interface SessionOptions {
  /** Our name for EHLO/LHLO. */
  readonly helo: string;
  readonly lmtp: boolean;
  readonly connectTimeoutMs: number;
  readonly timeouts: StageTimeouts;
}

/** The message as the agent sends it. */
export interface OutboundMessage {
  readonly file: string;
  readonly offset: number;
  readonly length: number;
  readonly eightBit: boolean;
}

/** Connects a socket with a timeout. */
function connectSocket(ep: Endpoint, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = 'path' in ep ? connect(ep.path) : connect({ host: ep.host, port: ep.port });
    const t = setTimeout(() => {
      sock.destroy();
      reject(new ConnectionError(`connect to ${ep.name} timed out`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(t);
      resolve(sock);
    });
    sock.once('error', (e) => {
      clearTimeout(t);
      reject(new ConnectionError(`connect to ${ep.name}: ${(e as NodeJS.ErrnoException).code ?? e.message}`));
    });
  });
}

/** Why a session could not be opened: the server refused (reply) or the connection failed. */
export class OpenError extends Error {
  readonly reply: ServerReply | null;
  constructor(msg: string, reply: ServerReply | null) {
    super(msg);
    this.reply = reply;
  }
}

/** An open, greeted session. */
export class ClientSession {
  readonly endpoint: Endpoint;
  readonly opts: SessionOptions;
  /** EHLO keywords (upper-case) → parameters. */
  readonly ext = new Map<string, string>();
  /** The greeting's first word: the server's name (for loop detection). */
  serverName = '';
  uses = 0;
  lastUsed = Date.now();
  private readonly r: ReplyReader;

  private constructor(endpoint: Endpoint, opts: SessionOptions, r: ReplyReader) {
    this.endpoint = endpoint;
    this.opts = opts;
    this.r = r;
  }

  /** Connects, reads the greeting and says EHLO (LHLO for LMTP). Throws OpenError or ConnectionError. */
  static async open(ep: Endpoint, opts: SessionOptions): Promise<ClientSession> {
    const sock = await connectSocket(ep, opts.connectTimeoutMs);
    const s = new ClientSession(ep, opts, new ReplyReader(sock));
    try {
      const greet = await s.r.read(opts.timeouts.greeting);
      if (greet.code !== 220) throw new OpenError(`${ep.name} greeted with ${replyLine(greet)}`, greet);
      s.serverName = (greet.text.split(' ')[0] ?? '').toLowerCase();
      await s.hello();
      return s;
    } catch (e) {
      sock.destroy();
      throw e;
    }
  }

  private async hello(): Promise<void> {
    const verb = this.opts.lmtp ? 'LHLO' : 'EHLO';
    await this.r.write(`${verb} ${this.opts.helo}\r\n`);
    let rep = await this.r.read(this.opts.timeouts.greeting);
    if (rep.code >= 500 && !this.opts.lmtp) {
      // RFC 5321 §3.2: fall back to HELO for servers without EHLO.
      await this.r.write(`HELO ${this.opts.helo}\r\n`);
      rep = await this.r.read(this.opts.timeouts.greeting);
      if (rep.code !== 250) throw new OpenError(`${this.endpoint.name} refused HELO: ${replyLine(rep)}`, rep);
      return;
    }
    if (rep.code !== 250) throw new OpenError(`${this.endpoint.name} refused ${verb}: ${replyLine(rep)}`, rep);
    for (const line of rep.lines.slice(1)) {
      const [kw, ...rest] = line.slice(4).trim().split(/\s+/);
      if (kw) this.ext.set(kw.toUpperCase(), rest.join(' '));
    }
  }

  /** The connection can carry another transaction. */
  get reusable(): boolean {
    return this.r.healthy;
  }

  /** Sends one message to the job's recipients; one result per recipient. Throws ConnectionError. */
  async transaction(job: DeliveryJob, msg: OutboundMessage): Promise<RecipientResult[]> {
    this.uses++;
    this.lastUsed = Date.now();
    const relay = this.endpoint.name;
    const all = (status: RecipientResult['status'], dsn: string, reply: string): RecipientResult[] =>
      job.recipients.map((r) => ({ index: r.index, status, dsn, reply, relay }));
    let utf8 = job.smtputf8;
    if (utf8 && !this.ext.has('SMTPUTF8')) {
      // RFC 6531 §3.2: SMTPUTF8 is needed only for UTF-8 in the envelope or the header; without it the message
      // goes on as it is (as Postfix does), with it the peer cannot take it.
      if (await needsSmtputf8(job, msg)) return all('bounced', '5.6.7', `${relay} does not support SMTPUTF8`);
      utf8 = false;
    }
    if (msg.eightBit && !utf8 && !this.ext.has('8BITMIME')) {
      return all('bounced', '5.6.3', `${relay} does not support 8BITMIME; 8-bit message not converted`);
    }
    const max = Number(this.ext.get('SIZE') ?? '0');
    if (this.ext.has('SIZE') && max > 0 && msg.length > max) {
      return all('bounced', '5.3.4', `message size ${msg.length} exceeds ${relay}'s limit of ${max}`);
    }
    const dsn = this.ext.has('DSN');
    let mailCmd = `MAIL FROM:<${job.sender}>`;
    if (this.ext.has('SIZE')) mailCmd += ` SIZE=${msg.length}`;
    if (msg.eightBit && this.ext.has('8BITMIME')) mailCmd += ' BODY=8BITMIME';
    if (utf8) mailCmd += ' SMTPUTF8';
    if (dsn && job.ret) mailCmd += ` RET=${job.ret}`;
    if (dsn && job.envid !== undefined) mailCmd += ` ENVID=${xtext(job.envid)}`;
    const rcptCmds = job.recipients.map((r) => {
      let c = `RCPT TO:<${r.address}>`;
      if (dsn && r.notify) c += ` NOTIFY=${r.notify.length === 0 ? 'NEVER' : r.notify.join(',')}`;
      if (dsn && r.orcpt) {
        const semi = r.orcpt.indexOf(';');
        c += ` ORCPT=${r.orcpt.slice(0, semi)};${xtext(r.orcpt.slice(semi + 1))}`;
      }
      return c;
    });
    const t = this.opts.timeouts;
    const pipelining = this.ext.has('PIPELINING');
    let mailRep: ServerReply;
    const rcptReps: ServerReply[] = [];
    let dataRep: ServerReply | null = null;
    if (pipelining) {
      // RFC 2920: MAIL, RCPTs and DATA in one write; replies come back in order.
      await this.r.write([mailCmd, ...rcptCmds, 'DATA'].join('\r\n') + '\r\n');
      mailRep = await this.r.read(t.mail);
      for (let i = 0; i < rcptCmds.length; i++) rcptReps.push(await this.r.read(t.rcpt));
      dataRep = await this.r.read(t.dataInit);
    } else {
      await this.r.write(mailCmd + '\r\n');
      mailRep = await this.r.read(t.mail);
      if (mailRep.code === 250) {
        for (const c of rcptCmds) {
          await this.r.write(c + '\r\n');
          rcptReps.push(await this.r.read(t.rcpt));
        }
      }
    }
    if (mailRep.code !== 250) {
      if (dataRep?.code === 354) await this.abortData(t.dataDone);
      await this.rset();
      return all(statusOf(mailRep, 'mail'), dsnOf(mailRep, 'mail'), replyLine(mailRep));
    }
    const results = new Map<number, RecipientResult>();
    const accepted: number[] = [];
    job.recipients.forEach((r, i) => {
      const rep = rcptReps[i]!;
      if (rep.code >= 200 && rep.code < 300) accepted.push(i);
      else results.set(i, { index: r.index, status: statusOf(rep, 'rcpt'), dsn: dsnOf(rep, 'rcpt'), reply: replyLine(rep), relay });
    });
    if (accepted.length === 0) {
      if (dataRep?.code === 354) await this.abortData(t.dataDone);
      await this.rset();
      return job.recipients.map((_, i) => results.get(i)!);
    }
    if (!pipelining) {
      await this.r.write('DATA\r\n');
      dataRep = await this.r.read(t.dataInit);
    }
    if (dataRep!.code !== 354) {
      await this.rset();
      for (const i of accepted) {
        results.set(i, { index: job.recipients[i]!.index, status: statusOf(dataRep!, 'data'), dsn: dsnOf(dataRep!, 'data'), reply: replyLine(dataRep!), relay });
      }
      return job.recipients.map((_, i) => results.get(i)!);
    }
    await this.sendBody(msg);
    if (this.opts.lmtp) {
      // RFC 2033 §4.2: one reply per accepted recipient, in order.
      for (const i of accepted) {
        const rep = await this.r.read(t.dataDone);
        results.set(i, { index: job.recipients[i]!.index, status: statusOf(rep, 'data'), dsn: dsnOf(rep, 'data'), reply: replyLine(rep), relay });
      }
    } else {
      const rep = await this.r.read(t.dataDone);
      // RFC 3461 §5.2.1/§5.2.2: relaying is not final delivery; say whether the next hop took over the DSN duty.
      const relayed = dsn ? 'dsn' : 'plain';
      for (const i of accepted) {
        const status = statusOf(rep, 'data');
        results.set(i, { index: job.recipients[i]!.index, status, dsn: dsnOf(rep, 'data'), reply: replyLine(rep), relay, ...(status === 'sent' ? { relayed } : {}) });
      }
    }
    return job.recipients.map((_, i) => results.get(i)!);
  }

  private async sendBody(msg: OutboundMessage): Promise<void> {
    const state = { atLineStart: true };
    let last = 0x0a;
    let pending: Buffer | null = null;
    // The last chunk goes out with the end of data in one write.
    for await (const chunk of messageChunks(msg.file, msg.offset, msg.length)) {
      if (pending !== null) await this.r.write(pending, this.opts.timeouts.dataBlock);
      const c = chunk as Buffer;
      if (c.length > 0) last = c[c.length - 1]!;
      pending = dotStuff(c, state);
    }
    const end = last === 0x0a ? END_DATA : CRLF_END_DATA;
    await this.r.write(pending === null ? end : Buffer.concat([pending, end]), this.opts.timeouts.dataBlock);
  }

  // A 354 we did not want (pipelined DATA after failures): end it empty, discard the reply.
  private async abortData(timeout: number): Promise<void> {
    await this.r.write('.\r\n');
    await this.r.read(timeout);
  }

  private async rset(): Promise<void> {
    try {
      await this.r.write('RSET\r\n');
      await this.r.read(this.opts.timeouts.mail);
    } catch {
      /* the connection is not reused then */
    }
  }

  /** Says QUIT (best effort) and closes. */
  close(): void {
    const sock = this.r.sock;
    if (sock.destroyed) return;
    sock.end('QUIT\r\n');
    setTimeout(() => sock.destroy(), 1000).unref();
  }
}

const END_DATA = Buffer.from('.\r\n');
const CRLF_END_DATA = Buffer.from('\r\n.\r\n');

/** RFC 3461 §4 xtext encoding. */
export function xtext(s: string): string {
  let out = '';
  for (const ch of Buffer.from(s, 'utf8')) {
    out += ch < 33 || ch > 126 || ch === 0x2b || ch === 0x3d ? '+' + ch.toString(16).toUpperCase().padStart(2, '0') : String.fromCharCode(ch);
  }
  return out;
}

/** Classifies a reply: 2xx sent, 4xx deferred, 5xx bounced; 552 at RCPT is temporary (RFC 5321 §4.5.3.1.10). */
export function statusOf(rep: ServerReply, stage: 'mail' | 'rcpt' | 'data'): RecipientResult['status'] {
  if (rep.code >= 200 && rep.code < 300) return 'sent';
  if (rep.code === 552 && stage === 'rcpt') return 'deferred';
  if (rep.code >= 500) return 'bounced';
  return 'deferred';
}

/** The enhanced status for a reply, with a class default when the server gave none. */
export function dsnOf(rep: ServerReply, stage: 'mail' | 'rcpt' | 'data'): string {
  const status = statusOf(rep, stage);
  const cls = status === 'sent' ? '2' : status === 'deferred' ? '4' : '5';
  if (rep.enhanced !== '' && rep.enhanced[0] === cls) return rep.enhanced;
  if (rep.enhanced !== '') return `${cls}${rep.enhanced.slice(1)}`;
  return `${cls}.0.0`;
}

const NON_ASCII = /[^\x00-\x7f]/;

/** True when the envelope or the header section carries UTF-8 (the message then needs an SMTPUTF8 peer). */
async function needsSmtputf8(job: DeliveryJob, msg: OutboundMessage): Promise<boolean> {
  if (NON_ASCII.test(job.sender) || job.recipients.some((r) => NON_ASCII.test(r.address))) return true;
  if (msg.length === 0) return false;
  return NON_ASCII.test((await readHeaderSection(msg.file, msg.offset, msg.length)).toString('latin1'));
}
