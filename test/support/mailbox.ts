// SPDX-License-Identifier: MIT
// What a user finds after delivery: Maildir files under <data_dir>/mail/<user>/new, and DSNs (RFC 3464)
// parsed with postal-mime into their per-message and per-recipient fields.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import PostalMime, { type Email } from 'postal-mime';
import { waitFor } from './palisade.ts';

/** Messages in <dataDir>/mail/<user>/new, oldest file name first; [] when the Maildir does not exist. */
export function maildir(dir: string, user: string): Buffer[] {
  const box = join(dir, 'var/mail', user, 'new');
  let names: string[];
  try {
    names = readdirSync(box).sort();
  } catch {
    return [];
  }
  return names.map((n) => readFileSync(join(box, n)));
}

/** Waits until <user>'s Maildir holds at least `n` messages; returns them all. */
export function waitMaildir(dir: string, user: string, n = 1, timeoutMs = 15_000): Promise<Buffer[]> {
  return waitFor(`${n} message(s) in ${user}'s Maildir`, () => {
    const m = maildir(dir, user);
    return m.length >= n ? m : undefined;
  }, timeoutMs);
}

/** Fields of one block of a message/delivery-status part (names lower-cased, folded lines joined). */
export type DsnFields = Record<string, string>;

/** A parsed DSN. */
export interface ParsedDsn {
  readonly email: Email;
  /** Content-Type of the top-level message. */
  readonly contentType: string;
  /** The human-readable part. */
  readonly text: string;
  /** Per-message fields (Reporting-MTA, Original-Envelope-Id, Arrival-Date ...). */
  readonly message: DsnFields;
  /** One entry per recipient block (Final-Recipient, Action, Status, Diagnostic-Code ...). */
  readonly recipients: readonly DsnFields[];
  /** The returned original (message/rfc822 or text/rfc822-headers part), if any. */
  readonly original: { readonly type: string; readonly bytes: Buffer } | null;
}

function fieldsOf(block: string): DsnFields {
  const out: DsnFields = {};
  for (const line of block.replace(/\r?\n[ \t]+/g, ' ').split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0) out[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return out;
}

function bytesOf(content: ArrayBuffer | Uint8Array | string): Buffer {
  return typeof content === 'string' ? Buffer.from(content, 'utf8') : Buffer.from(content as ArrayBuffer);
}

/** Parses a DSN as delivered (a Maildir file or bytes received by a peer). */
export async function parseDsn(raw: Buffer): Promise<ParsedDsn> {
  const email = await PostalMime.parse(raw);
  const ct = email.headers.find((h) => h.key === 'content-type')?.value ?? '';
  const status = email.attachments.find((a) => a.mimeType === 'message/delivery-status');
  if (status === undefined) throw new Error(`no message/delivery-status part; Content-Type: ${ct}`);
  const blocks = bytesOf(status.content).toString('utf8').trim().split(/\r?\n\r?\n/).filter((b) => b.trim() !== '');
  const orig = email.attachments.find((a) => a.mimeType === 'message/rfc822' || a.mimeType === 'text/rfc822-headers');
  return {
    email,
    contentType: ct,
    text: email.text ?? '',
    message: fieldsOf(blocks[0] ?? ''),
    recipients: blocks.slice(1).map(fieldsOf),
    original: orig === undefined ? null : { type: orig.mimeType, bytes: bytesOf(orig.content) },
  };
}

/** Header value of a raw message (first occurrence, unfolded), or undefined. */
export function header(raw: Buffer, name: string): string | undefined {
  const text = raw.toString('utf8');
  const head = text.slice(0, text.search(/\r?\n\r?\n/) + 1 || text.length).replace(/\r?\n[ \t]+/g, ' ');
  const m = new RegExp(`^${name}:[ \\t]*(.*)$`, 'im').exec(head);
  return m ? m[1]!.trim() : undefined;
}
