// SPDX-License-Identifier: MIT
// Address: strict parser for RFC 5321 paths (§4.1.2) with RFC 6531 (SMTPUTF8) extensions and RFC 5321 §4.5.3.1 bounds.

import { domainToASCII } from 'node:url';

/** A parsed mailbox. `domain` is lower-cased, without trailing dot, IDNs as A-labels (ready for routing). */
export interface Mailbox {
  /** Local part as it will be written in an envelope (quoted when it needs quoting). */
  readonly local: string;
  /** Domain in A-label form, lower-case; for a literal the bracketed text, e.g. "[192.0.2.1]". */
  readonly domain: string;
  /** The domain is an address literal ("[...]"). */
  readonly literal: boolean;
  /** The address holds non-ASCII characters (needs SMTPUTF8). */
  readonly utf8: boolean;
  /** The local part carries sender-specified routing: "%", "!" or a quoted "@". */
  readonly routing: boolean;
  /** A source route was given (RFC 5321 §4.1.2 A-d-l) and ignored (§3.6.1 / Appendix C). */
  readonly sourceRoute: boolean;
}

/** Why an address was refused; the smtpd turns it into the right reply. */
export type AddressProblem = 'syntax' | 'too-long' | 'utf8';

/** Result of parsing a path. */
export type PathResult =
  | { readonly ok: true; readonly mailbox: Mailbox | null; readonly rest: string }
  | { readonly ok: false; readonly problem: AddressProblem };

// RFC 5321 §4.5.3.1.1-3 size limits (octets).
export const MAX_LOCAL_PART = 64;
export const MAX_DOMAIN = 255;
export const MAX_PATH = 256;

const ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]$/;

function isAtext(ch: string, utf8: boolean): boolean {
  if (ATEXT.test(ch)) return true;
  return utf8 && ch.codePointAt(0)! > 0x7f;
}

/** Renders a mailbox as "local@domain" (empty string for the null path). */
export function mailboxToString(m: Mailbox | null): string {
  return m === null ? '' : `${m.local}@${m.domain}`;
}

/**
 * Parses a path at the start of `input` ("<...>" then optional " params"). `allowUtf8` says whether the client
 * declared SMTPUTF8; a non-ASCII address without it is the 'utf8' problem (553 5.6.7). `allowNull` permits "<>".
 * Never throws: every input yields a result.
 */
export function parsePath(input: string, allowNull: boolean, allowUtf8: boolean): PathResult {
  if (!input.startsWith('<')) return { ok: false, problem: 'syntax' };
  const close = findClose(input);
  if (close < 0) return { ok: false, problem: 'syntax' };
  const inner = input.slice(1, close);
  const rest = input.slice(close + 1);
  if (rest !== '' && !rest.startsWith(' ')) return { ok: false, problem: 'syntax' };
  if (Buffer.byteLength(inner, 'utf8') + 2 > MAX_PATH) return { ok: false, problem: 'too-long' };
  if (inner === '') {
    return allowNull ? { ok: true, mailbox: null, rest: rest.trimStart() } : { ok: false, problem: 'syntax' };
  }
  const nonAscii = /[^\x00-\x7f]/.test(inner);
  if (nonAscii && !allowUtf8) return { ok: false, problem: 'utf8' };
  const parsed = parseMailboxWithRoute(inner, allowUtf8);
  if (typeof parsed === 'string') return { ok: false, problem: parsed };
  return { ok: true, mailbox: parsed, rest: rest.trimStart() };
}

// Finds the ">" that closes the path, skipping quoted strings.
function findClose(s: string): number {
  let quoted = false;
  for (let i = 1; i < s.length; i++) {
    const c = s[i];
    if (quoted) {
      if (c === '\\') i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') quoted = true;
    else if (c === '>') return i;
    else if (c === '<') return -1;
  }
  return -1;
}

function parseMailboxWithRoute(inner: string, utf8: boolean): Mailbox | AddressProblem {
  let sourceRoute = false;
  let s = inner;
  if (s.startsWith('@')) {
    // A-d-l = At-domain *( "," At-domain ) ":"  — accepted and ignored (RFC 5321 §3.6.1, Appendix C).
    const colon = s.indexOf(':');
    if (colon < 0) return 'syntax';
    for (const hop of s.slice(0, colon).split(',')) {
      if (!hop.startsWith('@') || parseDomain(hop.slice(1), utf8) === null) return 'syntax';
    }
    s = s.slice(colon + 1);
    sourceRoute = true;
  }
  const m = parseMailbox(s, utf8);
  if (typeof m === 'string') return m;
  return { ...m, sourceRoute };
}

/** Parses "local@domain" (no brackets). Returns the mailbox or the problem. */
export function parseMailbox(s: string, utf8: boolean): Mailbox | AddressProblem {
  let i = 0;
  let local: string;
  let routing = false;
  if (s.startsWith('"')) {
    // Quoted-string = DQUOTE *QcontentSMTP DQUOTE; qtextSMTP = %d32-33 / %d35-91 / %d93-126 (+UTF-8)
    let out = '';
    i = 1;
    let closed = false;
    while (i < s.length) {
      const c = s[i]!;
      const cp = c.codePointAt(0)!;
      if (c === '\\') {
        const n = s[i + 1];
        if (n === undefined || n.codePointAt(0)! < 32 || n.codePointAt(0)! > 126) return 'syntax';
        out += n;
        i += 2;
        continue;
      }
      if (c === '"') {
        closed = true;
        i++;
        break;
      }
      if (cp < 32 || cp === 127 || (cp > 127 && !utf8)) return 'syntax';
      out += c;
      i += c.length;
    }
    if (!closed) return 'syntax';
    if (out.includes('@') || out.includes('%') || out.includes('!')) routing = true;
    // Keep the quoted form only when the content is not a plain dot-string.
    local = isDotString(out, utf8) ? out : '"' + out.replace(/(["\\])/g, '\\$1') + '"';
  } else {
    const at = s.lastIndexOf('@');
    if (at <= 0) return 'syntax';
    local = s.slice(0, at);
    if (!isDotString(local, utf8)) return 'syntax';
    if (local.includes('%') || local.includes('!')) routing = true;
    i = at;
  }
  if (s[i] !== '@') return 'syntax';
  if (Buffer.byteLength(local, 'utf8') > MAX_LOCAL_PART) return 'too-long';
  const domainText = s.slice(i + 1);
  if (domainText.startsWith('[')) {
    const lit = parseAddressLiteral(domainText);
    if (lit === null) return 'syntax';
    return { local, domain: lit, literal: true, utf8: /[^\x00-\x7f]/.test(local), routing, sourceRoute: false };
  }
  const domain = normaliseDomain(domainText, utf8);
  if (domain === null) return 'syntax';
  if (domain.length > MAX_DOMAIN) return 'too-long';
  return { local, domain, literal: false, utf8: /[^\x00-\x7f]/.test(s), routing, sourceRoute: false };
}

function isDotString(s: string, utf8: boolean): boolean {
  if (s === '' || s.startsWith('.') || s.endsWith('.') || s.includes('..')) return false;
  for (const ch of s) {
    if (ch !== '.' && !isAtext(ch, utf8)) return false;
  }
  return true;
}

const LDH_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Parses a domain: lower-case, trailing dot removed, U-labels converted to A-labels.
 * Returns null when it is not a valid domain (RFC 5321 §4.1.2 Domain, RFC 5890 labels).
 */
export function parseDomain(text: string, utf8: boolean): string | null {
  const d = normaliseDomain(text, utf8);
  return d !== null && d.length <= MAX_DOMAIN ? d : null;
}

// parseDomain without the overall length bound, so parseMailbox can tell 'too-long' from 'syntax'.
function normaliseDomain(text: string, utf8: boolean): string | null {
  let d = text;
  if (d.endsWith('.')) d = d.slice(0, -1);
  if (d === '' || d.length > 1024) return null;
  if (/[^\x00-\x7f]/.test(d)) {
    if (!utf8) return null;
    if (/[\s\x00-\x20@\[\]<>"\\,;:]/.test(d)) return null;
    const ascii = domainToASCII(d);
    if (ascii === '') return null;
    d = ascii;
  }
  d = d.toLowerCase();
  const labels = d.split('.');
  for (const l of labels) {
    if (!LDH_LABEL.test(l)) return null;
  }
  return d;
}

/** Parses "[IPv4]" or "[IPv6:...]" (RFC 5321 §4.1.3); returns the normalised literal or null. */
export function parseAddressLiteral(text: string): string | null {
  if (!text.startsWith('[') || !text.endsWith(']')) return null;
  const inner = text.slice(1, -1);
  if (/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(inner)) {
    return inner.split('.').every((o) => Number(o) <= 255 && String(Number(o)) === o) ? `[${inner}]` : null;
  }
  if (/^ipv6:/i.test(inner)) {
    const v6 = inner.slice(5);
    if (!/^[0-9a-fA-F:.]{2,45}$/.test(v6)) return null;
    try {
      const u = new URL(`http://[${v6}]/`);
      return `[IPv6:${u.hostname.slice(1, -1)}]`;
    } catch {
      return null;
    }
  }
  return null;
}

// A local part usable as a mailbox (directory) name: no dots first, no slashes, nothing a shell or a path
// would read specially.
const MAILBOX_NAME = /^[a-z0-9\u0080-\u{10ffff}][a-z0-9._+=\u0080-\u{10ffff}-]{0,63}$/u;

/** True when the (lower-cased, unquoted) local part can name a local mailbox. */
export function isMailboxName(local: string): boolean {
  return MAILBOX_NAME.test(local);
}
