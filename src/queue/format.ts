// SPDX-License-Identifier: MIT
// Queue file format (docs/queue-format.md): magic line, fixed-width lengths line, JSON envelope, message,
// end record with the message's SHA-256, then appended per-recipient state records.

import type { Envelope } from '../core/envelope.ts';
import type { FailedTarget } from '../core/delivery.ts';

/** First line of every queue file: magic and format version. */
export const MAGIC = 'PALISADE-QUEUE 1\n';
/** "L <envelope length, 10 digits> <message length, 16 digits>\n": fixed width so it can be patched in place. */
export const LENGTHS_SIZE = 2 + 10 + 1 + 16 + 1;
export const HEADER_SIZE = MAGIC.length + LENGTHS_SIZE;

/** The envelope as stored: the smtpd envelope plus what cleanup adds. */
export interface QueueEnvelope extends Envelope {
  readonly id: string;
  /** Arrival time, RFC 3339. */
  readonly arrival: string;
  /** Message-ID header field of the message, if any (for logs). */
  readonly messageId?: string;
}

/** Recipient states as in the contract: pending (not tried), deferred, sent, bounced. */
export type RecipientState = 'pending' | 'deferred' | 'sent' | 'bounced';

/** One appended state record: the outcome of a delivery attempt for one recipient. */
export interface StateRecord {
  /** Index into envelope.recipients. */
  readonly rcpt: number;
  readonly state: Exclude<RecipientState, 'pending'>;
  /** Enhanced status, e.g. "5.1.1". */
  readonly dsn: string;
  /** The remote (or local) reply text. */
  readonly reply: string;
  /** RFC 3339 time of the attempt. */
  readonly at: string;
  /** RFC 3339 time of the next retry, for deferred. */
  readonly next?: string | null;
  /** Rounds that tried a delivery so far (the backoff exponent), for deferred; older files lack it. */
  readonly attempts?: number;
  /** A delivery agent's "sent" mark for a recipient whose success DSN qmgr has not sent yet. */
  readonly success_owed?: boolean;
  /** With success_owed: how the next hop took it (RecipientResult.relayed). */
  readonly relayed?: 'dsn' | 'plain';
  /**
   * A delivery agent's "bounced" mark for a job whose qmgr was gone when it ended (a reload, a crash): the next
   * qmgr sends the failure DSN it owes.
   */
  readonly failure_owed?: boolean;
  /** For bounced: the alias targets that failed (RecipientResult.targets), reported in the failure DSN. */
  readonly targets?: readonly FailedTarget[];
}

/**
 * Each recipient's state record as readers take it: the last one, except that after a `sent` record only
 * another `sent` counts. A delivery agent marks a recipient sent before it answers qmgr; when the agent died
 * after its mark but before its answer arrived, qmgr recorded the job deferred after the mark, and that
 * record must not make the recipient deliverable again. (A later `sent`, qmgr's own after the success DSN
 * its mark owed, does replace it.)
 */
export function recipientRecords(records: readonly StateRecord[]): Map<number, StateRecord> {
  const last = new Map<number, StateRecord>();
  for (const r of records) {
    if (typeof r.rcpt !== 'number') continue;
    if (last.get(r.rcpt)?.state !== 'sent' || r.state === 'sent') last.set(r.rcpt, r);
  }
  return last;
}

/** Formats the lengths line. */
export function lengthsLine(envLen: number, msgLen: number): string {
  return `L ${String(envLen).padStart(10, '0')} ${String(msgLen).padStart(16, '0')}\n`;
}

/** Formats the end record: the message's SHA-256 and whether it holds 8-bit bytes ("8bit" / "7bit"). */
export function endRecord(sha256hex: string, eightBit: boolean): string {
  return `E ${sha256hex} ${eightBit ? '8bit' : '7bit'}\n`;
}

/** Formats one state record line. */
export function stateLine(r: StateRecord): string {
  return `R ${JSON.stringify(r)}\n`;
}

/** A queue file as read back. */
export interface ParsedQueueFile {
  readonly envelope: QueueEnvelope;
  /** Byte offset and length of the message in the file. */
  readonly messageOffset: number;
  readonly messageLength: number;
  readonly sha256: string;
  /** The message holds bytes over 127 (needs 8BITMIME or SMTPUTF8 on the way out). */
  readonly eightBit: boolean;
  readonly records: readonly StateRecord[];
}

/** Why a file is not a valid queue file. */
export class CorruptQueueFile extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'CorruptQueueFile';
  }
}

/**
 * Parses the parts of a queue file: `head` holds at least the first HEADER_SIZE + envelope bytes,
 * `tail` the bytes from messageOffset + messageLength to the end. Throws CorruptQueueFile.
 */
export function parseHead(head: Buffer): { envLen: number; msgLen: number; envelope: QueueEnvelope; messageOffset: number } {
  if (head.subarray(0, MAGIC.length).toString('latin1') !== MAGIC) throw new CorruptQueueFile('bad magic');
  const l = /^L (\d{10}) (\d{16})\n$/.exec(head.subarray(MAGIC.length, HEADER_SIZE).toString('latin1'));
  if (l === null) throw new CorruptQueueFile('bad lengths line');
  const envLen = Number(l[1]);
  const msgLen = Number(l[2]);
  if (head.length < HEADER_SIZE + envLen + 1) throw new CorruptQueueFile('truncated envelope');
  let envelope: QueueEnvelope;
  try {
    envelope = JSON.parse(head.subarray(HEADER_SIZE, HEADER_SIZE + envLen).toString('utf8')) as QueueEnvelope;
  } catch {
    throw new CorruptQueueFile('envelope is not JSON');
  }
  if (head[HEADER_SIZE + envLen] !== 0x0a) throw new CorruptQueueFile('envelope not terminated');
  return { envLen, msgLen, envelope, messageOffset: HEADER_SIZE + envLen + 1 };
}

/** Parses the end record and the state records that follow the message. */
export function parseTail(tail: Buffer): { sha256: string; eightBit: boolean; records: StateRecord[] } {
  const text = tail.toString('utf8');
  const lines = text.split('\n');
  const end = /^E ([0-9a-f]{64}) (8bit|7bit)$/.exec(lines[0] ?? '');
  if (end === null) throw new CorruptQueueFile('missing end record');
  const records: StateRecord[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (line === '') continue;
    // A record torn by a crash mid-append is the last line and has no newline: ignore it (the attempt repeats).
    if (i === lines.length - 1) break;
    if (!line.startsWith('R ')) throw new CorruptQueueFile('bad state record');
    try {
      records.push(JSON.parse(line.slice(2)) as StateRecord);
    } catch {
      throw new CorruptQueueFile('bad state record');
    }
  }
  return { sha256: end[1]!, eightBit: end[2] === '8bit', records };
}
