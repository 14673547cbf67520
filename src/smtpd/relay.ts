// SPDX-License-Identifier: MIT
// Recipient policy at RCPT: local recipients checked against the table (unknown → 550 5.1.1, never
// accept-then-bounce); anything else only for relay domains or trusted clients (else 554 5.7.1).

import { isMailboxName, type Mailbox } from '../core/address.ts';
import { R, type Reply } from '../core/reply.ts';
import type { NetworkList } from '../core/cidr.ts';
import type { LookupTable } from '../lookup/index.ts';

/** What RCPT needs to decide on a recipient. */
export interface RecipientPolicy {
  readonly localDomains: ReadonlySet<string>;
  readonly relayDomains: ReadonlySet<string>;
  readonly trusted: NetworkList;
  /** Known local recipients; an empty table means every local part exists. */
  readonly recipients: LookupTable;
  /** Alias names (always exist). */
  readonly aliases: LookupTable;
}

/** Why a recipient was accepted: delivered here, or relayed on. */
export type RecipientVerdict = { readonly ok: true; readonly local: boolean } | { readonly ok: false; readonly reply: Reply };

/** Decides one recipient for a client at `ip`. */
export function checkRecipient(p: RecipientPolicy, m: Mailbox, ip: string): RecipientVerdict {
  const trusted = p.trusted.has(ip);
  // Sender-specified routing (user%host@, host!user@, "user@host"@) is how relays get tricked: trusted only.
  if (m.routing && !trusted) return { ok: false, reply: R.routingDenied };
  if (!m.literal && p.localDomains.has(m.domain)) {
    const lp = unquote(m.local).toLowerCase();
    if (lp === 'postmaster') return { ok: true, local: true }; // RFC 5321 §4.5.1
    if (p.aliases.has(lp)) return { ok: true, local: true };
    // Without a table every local part that can name a mailbox exists; the others would only bounce later.
    if (p.recipients.size === 0 ? isMailboxName(lp) : p.recipients.has(lp) || p.recipients.has(`${lp}@${m.domain}`)) return { ok: true, local: true };
    return { ok: false, reply: R.unknownUser };
  }
  if (!m.literal && p.relayDomains.has(m.domain)) return { ok: true, local: false };
  if (trusted) return { ok: true, local: false };
  return { ok: false, reply: R.relayDenied };
}

function unquote(local: string): string {
  return local.startsWith('"') ? local.slice(1, -1).replace(/\\(.)/g, '$1') : local;
}
