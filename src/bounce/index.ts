// SPDX-License-Identifier: MIT
// bounce: builds RFC 3464 delivery status notifications (failure, delay, success) as multipart/report
// (RFC 6522) from <>, with ENVID/ORCPT echoed and the original returned per RET. A library: the caller
// injects the result through cleanup. Never builds a DSN for a message from the null sender.

import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rfc5322Date } from '../core/date.ts';
import { readHeaderSection } from '../queue/index.ts';

/** One recipient line of a DSN. */
export interface DsnRecipient {
  /** Final-Recipient. */
  readonly address: string;
  readonly orcpt?: string;
  /** The recipient an alias expansion led from to `address` (named in the human-readable part). */
  readonly expandedFrom?: string;
  /** RFC 3464 §2.3.3; "relayed" = handed to a next hop that does not support DSN (RFC 3461 §5.2.2). */
  readonly action: 'failed' | 'delayed' | 'delivered' | 'relayed';
  readonly status: string;
  /** The reply that decided it ("550 5.1.1 User unknown") or a local reason. */
  readonly diagnostic: string;
  /** Remote host, e.g. "mx.example.org[192.0.2.1]:25"; "" for local outcomes. */
  readonly remoteMta: string;
  readonly lastAttempt: Date;
  /** For delays: when the message will be given up. */
  readonly willRetryUntil?: Date;
}

/** Inputs of a DSN. */
export interface DsnInput {
  readonly hostname: string;
  readonly qid: string;
  readonly sender: string;
  readonly envid?: string;
  readonly ret?: 'FULL' | 'HDRS';
  readonly arrival: Date;
  readonly recipients: readonly DsnRecipient[];
  /** The original message in the queue file. */
  readonly file: string;
  readonly offset: number;
  readonly length: number;
  readonly eightBit: boolean;
}

/** Beyond this size the original is returned as headers only unless RET=FULL asked for it. */
export const RETURN_FULL_LIMIT = 100_000;
// Never return more than this, whatever RET says.
const RETURN_HARD_LIMIT = 10_000_000;

// "mx.example.org[192.0.2.1]:25" → "mx.example.org"; "192.0.2.1:25" → "192.0.2.1"; "[::1]:25" → "::1".
function remoteHost(relay: string): string {
  const named = /^([^\[\]:]+)\[/.exec(relay);
  if (named) return named[1]!;
  const v6 = /^\[([^\]]+)\]/.exec(relay);
  if (v6) return v6[1]!;
  return relay.replace(/:\d+$/, '');
}

/** The envelope and bytes of a DSN ready for cleanup. null when none may be sent (null sender). */
export function buildDsn(d: DsnInput): { envelope: object; parts: AsyncIterable<Buffer> } | null {
  if (d.sender === '') return null; // RFC 3461 §6.2 / RFC 5321 §4.5.5: never a bounce for a bounce
  const kind = d.recipients.every((r) => r.action === 'delivered' || r.action === 'relayed') ? 'success' : d.recipients.every((r) => r.action === 'delayed') ? 'delay' : 'failure';
  const boundary = `${d.qid}.${randomBytes(6).toString('hex')}/${d.hostname}`;
  const subject = kind === 'failure' ? 'Undelivered Mail Returned to Sender' : kind === 'delay' ? 'Delayed Mail (still being retried)' : 'Successful Mail Delivery Report';
  const full = d.ret === 'HDRS' ? false : d.ret === 'FULL' ? d.length <= RETURN_HARD_LIMIT : d.length <= RETURN_FULL_LIMIT;
  const head = [
    `From: MAILER-DAEMON@${d.hostname} (Mail Delivery System)`,
    `To: <${d.sender}>`,
    `Subject: ${subject}`,
    `Date: ${rfc5322Date(new Date())}`,
    `Message-ID: <${d.qid}.${Date.now().toString(36)}.dsn@${d.hostname}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="${boundary}"`,
    '',
    'This is a MIME-encapsulated message.',
    '',
  ].join('\r\n');
  const human = [
    `--${boundary}`,
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    `This is the mail system at host ${d.hostname}.`,
    '',
    kind === 'failure' ? 'Your message could not be delivered to one or more recipients.\r\nIt is attached below.'
      : kind === 'delay' ? 'Your message has not been delivered yet to the recipients below.\r\nDelivery will be retried; you do not need to resend it.'
        : d.recipients.some((r) => r.action === 'relayed')
          ? 'Your message was delivered or relayed to the recipients below;\r\na relayed message may get no further notice.'
          : 'Your message was delivered to the recipients below.',
    '',
    ...d.recipients.map((r) => `<${r.address}>${r.expandedFrom ? ` (expanded from <${r.expandedFrom}>)` : ''}: ${r.action}${r.remoteMta ? ` (host ${r.remoteMta})` : ''}: ${r.diagnostic}`),
    '',
  ].join('\r\n');
  const status = [
    `--${boundary}`,
    'Content-Type: message/delivery-status',
    '',
    `Reporting-MTA: dns; ${d.hostname}`,
    `X-Palisade-Queue-ID: ${d.qid}`,
    ...(d.envid !== undefined ? [`Original-Envelope-Id: ${printable(d.envid)}`] : []),
    `Arrival-Date: ${rfc5322Date(d.arrival)}`,
    '',
    ...d.recipients.flatMap((r) => [
      `Final-Recipient: rfc822; ${r.address}`,
      ...(r.orcpt ? [`Original-Recipient: ${printable(r.orcpt).replace(';', '; ')}`] : []),
      `Action: ${r.action}`,
      `Status: ${r.status}`,
      ...(r.remoteMta ? [`Remote-MTA: dns; ${remoteHost(r.remoteMta)}`] : []),
      `Diagnostic-Code: ${/^\d{3} /.test(r.diagnostic) ? 'smtp' : 'x-palisade'}; ${r.diagnostic.replace(/[\r\n]+/g, ' ')}`,
      `Last-Attempt-Date: ${rfc5322Date(r.lastAttempt)}`,
      ...(r.willRetryUntil ? [`Will-Retry-Until: ${rfc5322Date(r.willRetryUntil)}`] : []),
      '',
    ]),
  ].join('\r\n');
  const origHead = [
    `--${boundary}`,
    `Content-Type: ${full ? 'message/rfc822' : 'text/rfc822-headers'}`,
    ...(d.eightBit ? ['Content-Transfer-Encoding: 8bit'] : []),
    '',
    '',
  ].join('\r\n');
  async function* parts(): AsyncIterable<Buffer> {
    yield Buffer.from(head + '\r\n' + human + '\r\n' + status + '\r\n' + origHead, 'utf8');
    if (d.length > 0) {
      if (full) {
        for await (const c of createReadStream(d.file, { start: d.offset, end: d.offset + d.length - 1 })) yield c as Buffer;
      } else {
        yield await readHeaderSection(d.file, d.offset, d.length);
      }
    }
    yield Buffer.from(`\r\n--${boundary}--\r\n`);
  }
  return { envelope: { sender: '', recipients: [{ address: d.sender, notify: [] }], smtputf8: /[^\x00-\x7f]/.test(d.sender), client: { ip: '127.0.0.1', port: 0, helo: 'localhost', protocol: 'local' } }, parts: parts() };
}

// smtpd refuses control characters in ENVID and ORCPT; a queue file written before that rule (or by hand)
// still cannot put a line break or NUL into a DSN field.
function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]/g, '');
}
