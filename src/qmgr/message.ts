// SPDX-License-Identifier: MIT
// A message in qmgr's active set: its recipients' outcomes so far, as loaded from its queue file and updated
// by each round; and the choices made from them alone: which recipients a round's DSNs report, and how.

import type { FailedTarget } from '../core/delivery.ts';
import type { Notify } from '../core/envelope.ts';
import type { MessageState, ParsedQueueFile, QueueEnvelope, StateRecord } from '../queue/index.ts';
import type { DsnRecipient } from '../bounce/index.ts';
import { readRecords } from './records.ts';

type RcptStatus = 'pending' | 'deferred' | 'sent' | 'bounced';

/** One recipient of an active message. */
export interface Rcpt {
  readonly address: string;
  readonly notify?: readonly Notify[];
  readonly orcpt?: string;
  status: RcptStatus;
  dsn: string;
  reply: string;
  relay: string;
  /** How a "sent" recipient left us when it was relayed (see RecipientResult.relayed). */
  relayed?: 'dsn' | 'plain';
  /** A "bounced" alias's failed targets (see RecipientResult.targets). */
  targets?: readonly FailedTarget[];
  at: number;
  /** Outcome of this round still to be reported in a DSN. */
  report: boolean;
}

/** A message in the active set. */
export interface Msg {
  readonly id: string;
  state: MessageState;
  readonly env: QueueEnvelope;
  readonly arrival: number;
  readonly eightBit: boolean;
  readonly offset: number;
  readonly length: number;
  readonly rcpts: Rcpt[];
  inFlight: number;
  /** Rounds that tried a delivery (the backoff exponent); a round a dead destination deferred at once is not one. */
  attempts: number;
  /** This round handed at least one job to a delivery agent. */
  tried: boolean;
  /** This round lost a job with its delivery agent (the agent died before answering). */
  agentLost: boolean;
  /** This round had a recipient deferred for another reason (a server's answer, a dead destination). */
  deferredOtherwise: boolean;
  warned: boolean;
  pendingAction: 'hold' | 'delete' | null;
  /** Outcomes of this round not yet written to the file. */
  unsaved: StateRecord[];
}

/**
 * How long a message waits in deferred/ after a round (ms), its attempts already counted for the round. The
 * backoff doubles from retry_min up to retry_max. A first attempt lost with its delivery agent (it died
 * mid-delivery: no server answered, nothing else deferred a recipient) waits for nothing, once: mail in flight
 * when an agent dies is not held back for minutes, and a message that kills the agent every time backs off
 * as any other from its second attempt. `prompt`: this is that once.
 */
export function retryDelay(m: Pick<Msg, 'agentLost' | 'deferredOtherwise' | 'attempts'>, promptDone: boolean, retryMinMs: number, retryMaxMs: number): { delay: number; prompt: boolean } {
  if (m.agentLost && !m.deferredOtherwise && m.attempts === 1 && !promptDone) return { delay: 0, prompt: true };
  return { delay: Math.min(retryMaxMs, retryMinMs * 2 ** Math.min(30, Math.max(0, m.attempts - 1))), prompt: false };
}

const DEFAULT_NOTIFY: readonly Notify[] = ['FAILURE', 'DELAY'];

/** Whether the recipient's NOTIFY (default FAILURE,DELAY) asks for `what`. */
export function wants(r: Rcpt, what: Notify): boolean {
  return (r.notify ?? DEFAULT_NOTIFY).includes(what);
}

/** The active-set entry for a queue file just read from active/. */
export function messageOf(id: string, q: ParsedQueueFile): Msg {
  const { last, warned, attempts } = readRecords(q.records);
  return {
    id,
    state: 'active',
    env: q.envelope,
    arrival: Date.parse(q.envelope.arrival),
    eightBit: q.eightBit,
    offset: q.messageOffset,
    length: q.messageLength,
    rcpts: q.envelope.recipients.map((r, i) => {
      const rec = last.get(i);
      return {
        address: r.address,
        ...(r.notify ? { notify: r.notify } : {}),
        ...(r.orcpt ? { orcpt: r.orcpt } : {}),
        status: rec?.state ?? 'pending',
        dsn: rec?.dsn ?? '',
        reply: rec?.reply ?? '',
        relay: '',
        at: rec ? Date.parse(rec.at) : 0,
        // A delivery agent's mark for a recipient still owed its success or failure DSN (its qmgr was gone).
        report: (rec?.state === 'sent' && rec.success_owed === true) || (rec?.state === 'bounced' && rec.failure_owed === true),
        ...(rec?.success_owed === true && rec.relayed ? { relayed: rec.relayed } : {}),
        ...(rec?.state === 'bounced' && rec.targets ? { targets: rec.targets } : {}),
      };
    }),
    inFlight: 0,
    attempts,
    tried: false,
    agentLost: false,
    deferredOtherwise: false,
    warned,
    pendingAction: null,
    unsaved: [],
  };
}

/**
 * The queue lifetime is over: every recipient not finished bounces (5.4.7, with its last reply), recorded in
 * `m.unsaved`. Returns the recipients it bounced.
 */
export function expire(m: Msg, t: number, lifetime: string): Rcpt[] {
  const out: Rcpt[] = [];
  for (const [i, r] of m.rcpts.entries()) {
    if (r.status !== 'deferred' && r.status !== 'pending') continue;
    const last = r.reply ? ` (last reply: ${r.reply})` : '';
    r.status = 'bounced';
    r.dsn = '5.4.7';
    r.reply = `message expired after ${lifetime} in the queue${last}`;
    r.at = t;
    r.report = true;
    delete r.targets;
    m.unsaved.push({ rcpt: i, state: 'bounced', dsn: r.dsn, reply: r.reply, at: new Date(t).toISOString() });
    out.push(r);
  }
  return out;
}

/** The recipients each kind of DSN of this round reports. */
export interface DsnLists {
  readonly failed: Rcpt[];
  readonly success: Rcpt[];
  readonly delayed: Rcpt[];
}

/**
 * Who this round's DSNs are about, at time `t` (`delayWarning` 0 = no delay DSNs). A message from <> that
 * failed is held for the postmaster whatever its NOTIFY says (Palisade's own DSNs go out with NOTIFY=NEVER),
 * once its other recipients are done (so they are not held with it): all its bounced recipients, of this round
 * or earlier ones. Other senders get a failure DSN where NOTIFY allows.
 */
export function dsnLists(m: Msg, t: number, delayWarning: number): DsnLists {
  const othersOpen = m.rcpts.some((r) => r.status === 'deferred' || r.status === 'pending');
  const failed = m.env.sender === ''
    ? (othersOpen ? [] : m.rcpts.filter((r) => r.status === 'bounced'))
    : m.rcpts.filter((r) => r.report && r.status === 'bounced' && wants(r, 'FAILURE'));
  // RFC 3461 §5.2.1: a next hop that took NOTIFY=SUCCESS reports success itself; we do not as well.
  const success = m.rcpts.filter((r) => r.report && r.status === 'sent' && wants(r, 'SUCCESS') && r.relayed !== 'dsn');
  const delayed = !m.warned && delayWarning > 0 && t - m.arrival >= delayWarning
    ? m.rcpts.filter((r) => r.status === 'deferred' && wants(r, 'DELAY'))
    : [];
  return { failed, success, delayed };
}

/**
 * One recipient's part of a DSN; `retryUntil` is when the message expires (for delays). An alias that failed
 * for some of its targets is reported as those targets (Final-Recipient), each expanded from the recipient,
 * which is their Original-Recipient unless the client gave an ORCPT.
 */
export function dsnRecipient(r: Rcpt, kind: DsnRecipient['action'], t: number, retryUntil: number): DsnRecipient[] {
  if (kind === 'failed' && r.status === 'bounced' && r.targets !== undefined && r.targets.length > 0) {
    return r.targets.map((x) => {
      // A target of the alias's own (a command) is the recipient itself, not something it was expanded to.
      const self = x.address.toLowerCase() === r.address.toLowerCase();
      // RFC 6533: an address with UTF-8 in it is of type utf-8.
      const orcpt = r.orcpt ?? (self ? undefined : `${/[^\x00-\x7f]/.test(r.address) ? 'utf-8' : 'rfc822'};${r.address}`);
      return {
        address: x.address, ...(orcpt !== undefined ? { orcpt } : {}), ...(self ? {} : { expandedFrom: r.address }), action: 'failed',
        status: x.dsn, diagnostic: x.reply, remoteMta: '', lastAttempt: new Date(r.at || t),
      };
    });
  }
  // RFC 3461 §5.2.2: relayed to a next hop without DSN is reported as "relayed", not "delivered".
  const action = kind === 'delivered' && r.relayed === 'plain' ? 'relayed' : kind;
  return [{
    address: r.address,
    ...(r.orcpt ? { orcpt: r.orcpt } : {}),
    action,
    status: r.dsn || (action === 'delivered' || action === 'relayed' ? '2.0.0' : action === 'delayed' ? '4.0.0' : '5.0.0'),
    diagnostic: r.reply,
    remoteMta: r.relay === 'local' ? '' : r.relay,
    lastAttempt: new Date(r.at || t),
    ...(action === 'delayed' ? { willRetryUntil: new Date(retryUntil) } : {}),
  }];
}
