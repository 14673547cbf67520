// SPDX-License-Identifier: MIT
// Replies: the one table of SMTP replies with their RFC 3463 enhanced status codes.

/** An SMTP reply: basic code, enhanced status (RFC 3463, "" for none) and client-safe text lines. */
export interface Reply {
  readonly code: number;
  readonly enhanced: string;
  readonly lines: readonly string[];
  /** Close the connection after sending this reply. */
  readonly close?: boolean;
}

/** Builds a reply; text may hold several lines separated by "\n". */
export function reply(code: number, enhanced: string, text: string, close = false): Reply {
  return { code, enhanced, lines: text.split('\n'), close };
}

/** Formats a reply for the wire: multi-line replies use "code-" continuation (RFC 5321 §4.2.1). */
export function formatReply(r: Reply): string {
  const prefix = r.enhanced === '' ? '' : r.enhanced + ' ';
  let out = '';
  for (let i = 0; i < r.lines.length; i++) {
    const sep = i === r.lines.length - 1 ? ' ' : '-';
    // The enhanced code goes on every line (RFC 2034 §3).
    out += `${r.code}${sep}${prefix}${r.lines[i]}\r\n`;
  }
  return out;
}

/**
 * An SMTP-level refusal as plain data: the code and text a client sees, plus a reason that only the log sees.
 * Handlers throw it or return its reply; nothing branches on its text.
 */
export class SmtpError extends Error {
  readonly reply: Reply;
  readonly reason: string;
  constructor(r: Reply, reason = '') {
    super(`${r.code} ${r.enhanced} ${r.lines.join(' ')}`);
    this.name = 'SmtpError';
    this.reply = r;
    this.reason = reason;
  }
  /** True for 4xx replies: the client may try again. */
  get temporary(): boolean {
    return this.reply.code >= 400 && this.reply.code < 500;
  }
}

/** The table of fixed replies. Dynamic ones (greeting, EHLO, queued) are built by their handlers. */
export const R = {
  ok: reply(250, '2.0.0', 'Ok'),
  senderOk: reply(250, '2.1.0', 'Sender ok'),
  rcptOk: reply(250, '2.1.5', 'Recipient ok'),
  resetOk: reply(250, '2.0.0', 'Reset ok'),
  noop: reply(250, '2.0.0', 'Ok'),
  vrfy: reply(252, '2.5.0', 'Cannot VRFY user, but will accept message and attempt delivery'),
  expn: reply(252, '2.5.0', 'Cannot EXPN list, but will accept message and attempt delivery'),
  help: reply(214, '2.0.0', 'See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT'),
  startData: reply(354, '', 'End data with <CR><LF>.<CR><LF>'),
  bye: reply(221, '2.0.0', 'Bye', true),

  // 4xx: temporary
  shuttingDown: reply(421, '4.3.2', 'Service shutting down, try again later', true),
  timeout: reply(421, '4.4.2', 'Timeout exceeded, closing connection', true),
  tooManyErrors: reply(421, '4.7.0', 'Too many errors, closing connection', true),
  tooManySessions: reply(421, '4.7.0', 'Too many sessions, try again later', true),
  tooManySessionsIp: reply(421, '4.7.0', 'Too many sessions from your address, try again later', true),
  connectionRate: reply(421, '4.7.0', 'Too many connections from your address, slow down', true),
  messageRate: reply(450, '4.7.1', 'Too many messages from your address, slow down'),
  recipientRate: reply(450, '4.7.1', 'Too many recipients from your address, slow down'),
  localError: reply(451, '4.3.0', 'Local error in processing, try again later'),
  tooManyRcpts: reply(452, '4.5.3', 'Too many recipients'),
  noStorage: reply(452, '4.3.1', 'Insufficient system storage'),

  // 5xx: permanent
  lineTooLong: reply(500, '5.5.2', 'Line too long'),
  unknownCommand: reply(500, '5.5.1', 'Command unrecognized'),
  nulInCommand: reply(500, '5.5.2', 'NUL character not allowed'),
  bareLfCommand: reply(500, '5.5.2', 'Bare CR or LF not allowed in commands; use CRLF'),
  syntax: reply(501, '5.5.4', 'Syntax error in parameters or arguments'),
  helloSyntax: reply(501, '5.5.4', 'Syntax: EHLO hostname'),
  badSender: reply(501, '5.1.7', 'Bad sender address syntax'),
  badRecipient: reply(501, '5.1.3', 'Bad recipient address syntax'),
  noParams: reply(501, '5.5.4', 'No parameters allowed'),
  notImplemented: reply(502, '5.5.1', 'Command not implemented'),
  needHelo: reply(503, '5.5.1', 'Send EHLO or HELO first'),
  needMail: reply(503, '5.5.1', 'Need MAIL command first'),
  needRcpt: reply(503, '5.5.1', 'Need RCPT command first'),
  nestedMail: reply(503, '5.5.1', 'Sender already specified'),
  badSequence: reply(503, '5.5.1', 'Bad sequence of commands'),
  bdatAfterData: reply(503, '5.5.1', 'Cannot mix BDAT and DATA'),
  rcptAfterBdat: reply(503, '5.5.1', 'No more recipients once BDAT has started; RSET to start over'),
  unknownParam: reply(555, '5.5.4', 'Unsupported MAIL/RCPT parameter'),
  badParam: reply(501, '5.5.4', 'Bad MAIL/RCPT parameter value'),
  needSmtputf8: reply(553, '5.6.7', 'Non-ASCII address requires SMTPUTF8'),
  unknownUser: reply(550, '5.1.1', 'Recipient address rejected: user unknown'),
  bareLfData: reply(550, '5.5.2', 'Message rejected: bare CR or LF in message content; lines must end with CRLF'),
  nulInData: reply(550, '5.6.0', 'Message rejected: NUL character in message content'),
  tooBig: reply(552, '5.3.4', 'Message size exceeds fixed maximum message size'),
  tooBigDeclared: reply(552, '5.3.4', 'Message size exceeds fixed maximum message size'),
  headersTooBig: reply(552, '5.3.4', 'Message header section too large'),
  loopDetected: reply(554, '5.4.6', 'Too many hops: mail loop detected'),
  relayDenied: reply(554, '5.7.1', 'Relay access denied'),
  routingDenied: reply(554, '5.7.1', 'Sender-specified routing is not allowed'),
  badRecipientDomain: reply(553, '5.1.2', 'Bad recipient domain'),
  noValidRcpts: reply(554, '5.5.1', 'No valid recipients'),
} as const;
