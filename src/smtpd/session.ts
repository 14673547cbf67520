// SPDX-License-Identifier: MIT
// Session: the RFC 5321 state machine as small handlers that each return a Reply. No I/O here:
// connection.ts reads lines and streams DATA/BDAT; these functions decide.

import { parsePath, mailboxToString, type Mailbox } from '../core/address.ts';
import type { Envelope, EnvelopeRecipient } from '../core/envelope.ts';
import { R, reply, type Reply } from '../core/reply.ts';
import { parseMailParams, parseRcptParams, isReply, type MailParams } from './parser.ts';
import { checkRecipient, type RecipientPolicy } from './relay.ts';

/** Session limits and identity from the [smtp] config. */
export interface SessionLimits {
  readonly hostname: string;
  readonly maxMessageSize: number;
  readonly maxRecipients: number;
  readonly requireHelo: boolean;
}

/** Per-connection state; the transaction part is cleared by RSET, EHLO/HELO and the end of a message. */
export interface Session {
  readonly ip: string;
  readonly port: number;
  helo: string | null;
  esmtp: boolean;
  sender: Mailbox | null | undefined; // undefined: no MAIL yet; null: null sender <>
  mailParams: MailParams;
  recipients: EnvelopeRecipient[];
  /** Which of DATA/BDAT the transaction used first; they cannot be mixed. */
  bodyMode: 'DATA' | 'BDAT' | null;
  messages: number;
}

/** A new session for a client at ip:port. */
export function newSession(ip: string, port: number): Session {
  return { ip, port, helo: null, esmtp: false, sender: undefined, mailParams: {}, recipients: [], bodyMode: null, messages: 0 };
}

/** Clears the mail transaction (RFC 5321 §4.1.1.5). */
export function resetTransaction(s: Session): void {
  s.sender = undefined;
  s.mailParams = {};
  s.recipients = [];
  s.bodyMode = null;
}

/** The greeting (RFC 5321 §4.3.1). */
export function greeting(l: SessionLimits): Reply {
  return reply(220, '', `${l.hostname} ESMTP Palisade`);
}

const HELO_ARG = /^[\x21-\x7e\u0080-\u{10ffff}]{1,255}$/u;

/** EHLO and HELO (RFC 5321 §4.1.1.1). */
export function hello(s: Session, l: SessionLimits, verb: 'EHLO' | 'HELO', args: string): Reply {
  const name = args.trim();
  if (!HELO_ARG.test(name)) return verb === 'EHLO' ? R.helloSyntax : reply(501, '5.5.4', 'Syntax: HELO hostname');
  resetTransaction(s);
  s.helo = name;
  s.esmtp = verb === 'EHLO';
  if (verb === 'HELO') return reply(250, '', l.hostname);
  return reply(250, '', [
    l.hostname,
    'PIPELINING',
    `SIZE ${l.maxMessageSize}`,
    '8BITMIME',
    'ENHANCEDSTATUSCODES',
    'SMTPUTF8',
    'CHUNKING',
    'DSN',
    'HELP',
  ].join('\n'));
}

/** MAIL FROM (RFC 5321 §4.1.1.2 with SIZE, BODY, SMTPUTF8, RET, ENVID). */
export function mail(s: Session, l: SessionLimits, args: string): Reply {
  if (s.helo === null && l.requireHelo) return R.needHelo;
  if (s.sender !== undefined) return R.nestedMail;
  const m = /^FROM:\s*/i.exec(args);
  if (m === null) return reply(501, '5.5.4', 'Syntax: MAIL FROM:<address>');
  const rest = args.slice(m[0].length);
  // Parse the path allowing UTF-8, then refuse it unless SMTPUTF8 is among the parameters (RFC 6531 §3.4).
  const p = parsePath(rest, true, true);
  if (!p.ok) return p.problem === 'too-long' ? reply(501, '5.1.7', 'Sender address too long') : R.badSender;
  // ESMTP parameters only after EHLO (RFC 5321 §4.1.1.11): not after HELO, nor before any greeting.
  if (!s.esmtp && p.rest !== '') return R.noParams;
  const params = parseMailParams(p.rest, l.maxMessageSize);
  if (isReply(params)) return params;
  if (p.mailbox?.utf8 === true && params.smtputf8 !== true) return R.needSmtputf8;
  s.sender = p.mailbox;
  s.mailParams = params;
  return R.senderOk;
}

/** RCPT TO (RFC 5321 §4.1.1.3 with NOTIFY, ORCPT), including relay control and the local recipient table. */
export function rcpt(s: Session, l: SessionLimits, policy: RecipientPolicy, args: string): Reply {
  if (s.sender === undefined) return R.needMail;
  // The envelope went to cleanup with the first BDAT chunk (RFC 3030): a later recipient would be lost.
  if (s.bodyMode !== null) return R.rcptAfterBdat;
  const m = /^TO:\s*/i.exec(args);
  if (m === null) return reply(501, '5.5.4', 'Syntax: RCPT TO:<address>');
  const rest = args.slice(m[0].length);
  if (s.recipients.length >= l.maxRecipients) return R.tooManyRcpts;
  const utf8 = s.mailParams.smtputf8 === true;
  let mbox: Mailbox;
  let paramText: string;
  if (/^<postmaster>(?=[ \t]|$)/i.test(rest)) {
    // RFC 5321 §4.1.1.3: "<Postmaster>" without a domain is always accepted.
    mbox = { local: 'postmaster', domain: [...policy.localDomains][0] ?? 'localhost', literal: false, utf8: false, routing: false, sourceRoute: false };
    paramText = rest.slice('<postmaster>'.length).trim();
  } else {
    const p = parsePath(rest, false, utf8);
    if (!p.ok) return p.problem === 'utf8' ? R.needSmtputf8 : p.problem === 'too-long' ? reply(501, '5.1.3', 'Recipient address too long') : R.badRecipient;
    mbox = p.mailbox!;
    paramText = p.rest;
  }
  if (!s.esmtp && paramText !== '') return R.noParams;
  const params = parseRcptParams(paramText);
  if (isReply(params)) return params;
  const verdict = checkRecipient(policy, mbox, s.ip);
  if (!verdict.ok) return verdict.reply;
  const address = mailboxToString(mbox);
  // Duplicate recipients are delivered once (the first one's DSN parameters win).
  if (!s.recipients.some((r) => r.address.toLowerCase() === address.toLowerCase())) {
    s.recipients.push({ address, ...(params.notify ? { notify: params.notify } : {}), ...(params.orcpt ? { orcpt: params.orcpt } : {}) });
  }
  return R.rcptOk;
}

/** Checks that a message may start (DATA or BDAT); returns null when it may. */
export function canStartBody(s: Session, mode: 'DATA' | 'BDAT'): Reply | null {
  if (s.sender === undefined) return R.needMail;
  if (s.recipients.length === 0) return R.noValidRcpts;
  if (s.bodyMode !== null && s.bodyMode !== mode) return R.bdatAfterData;
  return null;
}

/** The envelope of the current transaction, for cleanup. */
export function envelopeOf(s: Session): Envelope {
  const p = s.mailParams;
  const utf8 = p.smtputf8 === true;
  return {
    sender: mailboxToString(s.sender ?? null),
    recipients: s.recipients,
    ...(p.ret ? { ret: p.ret } : {}),
    ...(p.envid !== undefined ? { envid: p.envid } : {}),
    ...(p.body ? { body: p.body } : {}),
    smtputf8: utf8,
    ...(p.size !== undefined ? { declaredSize: p.size } : {}),
    client: { ip: s.ip, port: s.port, helo: s.helo ?? '', protocol: utf8 ? 'UTF8SMTP' : s.esmtp ? 'ESMTP' : 'SMTP' },
  };
}
