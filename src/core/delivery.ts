// SPDX-License-Identifier: MIT
// The contract between qmgr and the delivery agents: a job (one message, one next hop, some recipients)
// and one result per recipient, carried as DSN data (RFC 3463 status + the reply that decided it).

import type { Notify } from './envelope.ts';

/** Where a job goes. `mx` false = connect to host itself (a bracketed route). */
export type Route =
  | { readonly kind: 'smtp'; readonly host: string; readonly port: number; readonly mx: boolean }
  | { readonly kind: 'lmtp'; readonly host: string; readonly port: number }
  | { readonly kind: 'lmtp-unix'; readonly path: string }
  | { readonly kind: 'local' };

/** One recipient of a job: its index in the queue file's envelope and its DSN parameters. */
export interface JobRecipient {
  readonly index: number;
  readonly address: string;
  readonly notify?: readonly Notify[];
  readonly orcpt?: string;
}

/** A delivery job. The agent reads the message from the queue file itself. */
export interface DeliveryJob {
  readonly qid: string;
  /** Absolute path of the queue file. */
  readonly file: string;
  readonly route: Route;
  /** Destination name for logs and the connection cache (e.g. "example.org" or "[127.0.0.1]:2626"). */
  readonly nexthop: string;
  readonly sender: string;
  readonly recipients: readonly JobRecipient[];
  readonly smtputf8: boolean;
  readonly eightBit: boolean;
  /** Where the message lies in the queue file (qmgr has read the header already; the agent need not). */
  readonly message?: { readonly offset: number; readonly length: number };
  readonly ret?: 'FULL' | 'HDRS';
  readonly envid?: string;
}

/** An alias's target that failed for good while others got the message (see RecipientResult.targets). */
export interface FailedTarget {
  readonly address: string;
  readonly dsn: string;
  readonly reply: string;
}

/** Outcome for one recipient. */
export type DeliveryStatus = 'sent' | 'deferred' | 'bounced';

/** What happened to one recipient. */
export interface RecipientResult {
  readonly index: number;
  readonly status: DeliveryStatus;
  /** RFC 3463 enhanced status, e.g. "2.0.0", "4.4.1", "5.1.1". */
  readonly dsn: string;
  /** The remote reply (or local reason), one line. */
  readonly reply: string;
  /** The host that answered, e.g. "mx.example.org[192.0.2.1]:25", or "" */
  readonly relay: string;
  /**
   * For "sent" over SMTP (not final delivery): "dsn" when the next hop took the DSN parameters and now owns
   * any success notice (RFC 3461 §5.2.1), "plain" when it does not support DSN (§5.2.2: we report "relayed").
   */
  readonly relayed?: 'dsn' | 'plain';
  /**
   * For "bounced" after alias expansion: the targets that failed, when they are not the recipient itself. A DSN
   * reports each as its own Final-Recipient, with the recipient as its Original-Recipient (RFC 3464 §2.3.1-2).
   */
  readonly targets?: readonly FailedTarget[];
}

/** The agent's answer for a job: one result per job recipient, plus whether the destination itself failed. */
export interface JobResult {
  readonly results: readonly RecipientResult[];
  /** The destination could not be reached at all (qmgr shrinks its window / backs off). */
  readonly destinationFailed: boolean;
}
