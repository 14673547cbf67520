// SPDX-License-Identifier: MIT
// Command parsing: verbs and ESMTP parameters (RFC 5321 §4.1.1, RFC 1870, 1652, 3461, 6531, 3030).
// Every function returns data or a Reply; none throws on any input.

import { R, reply, type Reply } from '../core/reply.ts';
import type { Notify } from '../core/envelope.ts';

// RFC 5321 §4.5.3.1.4 sets 512 octets; extensions (DSN ORCPT, SMTPUTF8) make longer lines legitimate.
export const MAX_COMMAND_LINE = 2048;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The first command line of some input: none complete yet, a line, or a line refused (consumed all the same). */
export type TakenLine =
  | { readonly kind: 'none' }
  | { readonly kind: 'line'; readonly line: string; readonly rest: Buffer }
  | { readonly kind: 'bad'; readonly reply: Reply; readonly rest: Buffer };

/**
 * Takes one command line from `buf`. Only CRLF ends a line; a bare CR or LF in it, a NUL, invalid UTF-8 or
 * more than MAX_COMMAND_LINE octets make it refused. `discarding`: the start of an overlong line was dropped
 * already, and the line found now is its end (refused).
 */
export function takeLine(buf: Buffer, discarding: boolean): TakenLine {
  const lf = buf.indexOf(0x0a);
  if (lf < 0) return { kind: 'none' };
  const raw = buf.subarray(0, lf + 1);
  const rest = buf.subarray(lf + 1);
  if (discarding || raw.length > MAX_COMMAND_LINE + 2) return { kind: 'bad', reply: R.lineTooLong, rest };
  if (lf === 0 || raw[lf - 1] !== 0x0d) return { kind: 'bad', reply: R.bareLfCommand, rest };
  const content = raw.subarray(0, raw.length - 2);
  if (content.indexOf(0x0d) >= 0) return { kind: 'bad', reply: R.bareLfCommand, rest };
  if (content.indexOf(0) >= 0) return { kind: 'bad', reply: R.nulInCommand, rest };
  try {
    return { kind: 'line', line: utf8.decode(content), rest };
  } catch {
    return { kind: 'bad', reply: reply(500, '5.5.2', 'Invalid UTF-8 in command'), rest };
  }
}

/** A command line split into its verb (upper-case) and argument text. */
export interface Command {
  readonly verb: string;
  readonly args: string;
}

/** Splits a command line (without CRLF). Verbs are case-insensitive (RFC 5321 §2.4). */
export function parseCommand(line: string): Command {
  const sp = line.indexOf(' ');
  if (sp < 0) return { verb: line.toUpperCase(), args: '' };
  return { verb: line.slice(0, sp).toUpperCase(), args: line.slice(sp + 1) };
}

/** Parameters of MAIL FROM. */
export interface MailParams {
  size?: number;
  body?: '7BIT' | '8BITMIME';
  smtputf8?: boolean;
  ret?: 'FULL' | 'HDRS';
  envid?: string;
}

/** Parameters of RCPT TO. */
export interface RcptParams {
  notify?: Notify[];
  orcpt?: string;
}

const KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
// esmtp-value = 1*(%d33-60 / %d62-126) (RFC 5321 §4.1.2), UTF-8 allowed with SMTPUTF8 (RFC 6531 §3.3)
const VALUE = /^[\x21-\x3c\x3e-\x7e\u0080-\u{10ffff}]+$/u;

function splitParams(text: string): { key: string; value: string | null }[] | Reply {
  const out: { key: string; value: string | null }[] = [];
  const seen = new Set<string>();
  for (const part of text.split(' ')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = (eq < 0 ? part : part.slice(0, eq)).toUpperCase();
    const value = eq < 0 ? null : part.slice(eq + 1);
    if (!KEYWORD.test(key) || (value !== null && !VALUE.test(value))) return R.syntax;
    if (seen.has(key)) return reply(501, '5.5.4', `Duplicate ${key} parameter`);
    seen.add(key);
    out.push({ key, value });
  }
  return out;
}

/**
 * Decodes RFC 3461 §4 xtext; null when malformed. Both users (ENVID, ORCPT) carry printable US-ASCII (RFC 3461
 * §4.2, §4.4), so an escape that decodes to a control character or a non-ASCII octet is refused: the value is
 * later written into DSN fields, where a CR or LF would forge fields.
 */
export function decodeXtext(s: string): string | null {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (s[i] === '+') {
      const hex = s.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) return null;
      const octet = parseInt(hex, 16);
      if (octet < 0x20 || octet > 0x7e) return null;
      out += String.fromCharCode(octet);
      i += 2;
    } else if (c < 33 || c > 126 || s[i] === '=') {
      return null;
    } else {
      out += s[i];
    }
  }
  return out;
}

/** Parses MAIL parameters; `maxSize` enforces SIZE at MAIL (RFC 1870 §6.1). */
export function parseMailParams(text: string, maxSize: number): MailParams | Reply {
  const parts = splitParams(text);
  if (!Array.isArray(parts)) return parts;
  const p: MailParams = {};
  for (const { key, value } of parts) {
    switch (key) {
      case 'SIZE':
        if (value === null || !/^\d{1,20}$/.test(value)) return reply(501, '5.5.4', 'Bad SIZE parameter');
        p.size = Number(value);
        if (p.size > maxSize) return R.tooBigDeclared;
        break;
      case 'BODY': {
        const v = value?.toUpperCase();
        if (v !== '7BIT' && v !== '8BITMIME') return reply(501, '5.5.4', 'Bad BODY parameter (7BIT or 8BITMIME)');
        p.body = v;
        break;
      }
      case 'SMTPUTF8':
        if (value !== null) return reply(501, '5.5.4', 'SMTPUTF8 takes no value');
        p.smtputf8 = true;
        break;
      case 'RET': {
        const v = value?.toUpperCase();
        if (v !== 'FULL' && v !== 'HDRS') return reply(501, '5.5.4', 'Bad RET parameter (FULL or HDRS)');
        p.ret = v;
        break;
      }
      case 'ENVID': {
        const v = value === null ? null : decodeXtext(value);
        // RFC 3461 §4.4: at most 100 characters.
        if (v === null || v.length > 100) return reply(501, '5.5.4', 'Bad ENVID parameter');
        p.envid = v;
        break;
      }
      default:
        return reply(555, '5.5.4', `Unsupported MAIL parameter ${key}`);
    }
  }
  return p;
}

/** Parses RCPT parameters. */
export function parseRcptParams(text: string): RcptParams | Reply {
  const parts = splitParams(text);
  if (!Array.isArray(parts)) return parts;
  const p: RcptParams = {};
  for (const { key, value } of parts) {
    switch (key) {
      case 'NOTIFY': {
        if (value === null) return reply(501, '5.5.4', 'Bad NOTIFY parameter');
        const items = value.toUpperCase().split(',');
        if (items.length === 1 && items[0] === 'NEVER') {
          p.notify = [];
          break;
        }
        const set = new Set<Notify>();
        for (const it of items) {
          if (it !== 'SUCCESS' && it !== 'FAILURE' && it !== 'DELAY') return reply(501, '5.5.4', 'Bad NOTIFY parameter');
          set.add(it);
        }
        p.notify = [...set];
        break;
      }
      case 'ORCPT': {
        // ORCPT=addr-type ";" xtext (RFC 3461 §4.2); RFC 6533 utf-8 type decoded the same way for storage.
        const semi = value?.indexOf(';') ?? -1;
        if (value === null || semi <= 0) return reply(501, '5.5.4', 'Bad ORCPT parameter');
        const type = value.slice(0, semi);
        const addr = decodeXtext(value.slice(semi + 1));
        if (!/^[A-Za-z0-9-]+$/.test(type) || addr === null || addr === '' || addr.length > 500) {
          return reply(501, '5.5.4', 'Bad ORCPT parameter');
        }
        p.orcpt = `${type.toLowerCase() === 'rfc822' ? 'rfc822' : type};${addr}`;
        break;
      }
      default:
        return reply(555, '5.5.4', `Unsupported RCPT parameter ${key}`);
    }
  }
  return p;
}

/** True when `x` is a Reply (parsers return either data or a reply). */
export function isReply(x: unknown): x is Reply {
  return typeof x === 'object' && x !== null && 'code' in x && 'lines' in x;
}
