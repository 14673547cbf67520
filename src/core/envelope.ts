// SPDX-License-Identifier: MIT
// Envelope: what travels with a message from smtpd to cleanup to the queue (sender, recipients, DSN, client facts).

/** RFC 3461 NOTIFY values; "NEVER" excludes the others. */
export type Notify = 'SUCCESS' | 'FAILURE' | 'DELAY';

/** One envelope recipient with its DSN parameters (RFC 3461 §4). */
export interface EnvelopeRecipient {
  /** Address as "local@domain" (domain normalised). */
  readonly address: string;
  /** NOTIFY list; empty array means NEVER; undefined means not given (default FAILURE,DELAY). */
  readonly notify?: readonly Notify[];
  /** ORCPT as given: "addr-type;xtext-decoded-address". */
  readonly orcpt?: string;
}

/** Facts about the client connection, kept in the queue for Received and DSNs. */
export interface ClientInfo {
  readonly ip: string;
  readonly port: number;
  readonly helo: string;
  /** "SMTP", "ESMTP", "UTF8SMTP" ... as in RFC 3848 / RFC 6531 for the Received "with" clause. */
  readonly protocol: string;
}

/** The envelope of one transaction as handed to cleanup. */
export interface Envelope {
  /** Sender address, "" for the null sender. */
  readonly sender: string;
  readonly recipients: readonly EnvelopeRecipient[];
  /** RFC 3461 RET. */
  readonly ret?: 'FULL' | 'HDRS';
  /** RFC 3461 ENVID (xtext-decoded). */
  readonly envid?: string;
  /** RFC 1652 BODY. */
  readonly body?: '7BIT' | '8BITMIME';
  /** RFC 6531: the transaction asked for SMTPUTF8. */
  readonly smtputf8: boolean;
  /** RFC 1870 SIZE as declared by the client, if any. */
  readonly declaredSize?: number;
  readonly client: ClientInfo;
}
