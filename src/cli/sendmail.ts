// SPDX-License-Identifier: MIT
// sendmail: the classic local submission interface. Reads a message on stdin and injects it through the same
// cleanup path as smtpd. Exit 0 once queued, 75 when Palisade is not running (the caller keeps the message),
// 64 bad usage, 65 bad input.

import { userInfo } from 'node:os';
import { randomBytes } from 'node:crypto';
import { configPath, loadConfig, ConfigError, type Config } from '../config/index.ts';
import { parseMailbox, mailboxToString } from '../core/address.ts';
import type { EnvelopeRecipient } from '../core/envelope.ts';
import { EXIT } from '../core/exit.ts';
import { submit } from '../ipc/index.ts';
import { QueueStore } from '../queue/index.ts';
import { rfc5322Date } from '../core/date.ts';

interface Options {
  /** -bm (default): read a message; -bp: list the queue; -bs: SMTP on stdin and stdout. */
  mode: 'deliver' | 'list' | 'smtp';
  extract: boolean;
  /** -i / -oi: a line with only "." does not end the message (without it, it does, as in sendmail). */
  ignoreDots: boolean;
  sender: string | null;
  fullName: string | null;
  config: string | undefined;
  recipients: string[];
}

// sendmail's option syntax predates getopt conventions (-oi, -bs, -f addr / -faddr), so it is parsed by hand.
function parseOptions(argv: string[]): Options | string {
  const o: Options = { mode: 'deliver', extract: false, ignoreDots: false, sender: null, fullName: null, config: undefined, recipients: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      o.recipients.push(...argv.slice(i + 1));
      break;
    }
    if (a === '--config') {
      o.config = argv[++i];
      continue;
    }
    if (!a.startsWith('-') || a === '-') {
      o.recipients.push(a);
      continue;
    }
    // Flags without a value may be combined: -ti, -it.
    if (/^-[tiv]+$/.test(a)) {
      if (a.includes('t')) o.extract = true;
      if (a.includes('i')) o.ignoreDots = true;
      continue;
    }
    const flag = a.slice(1, 2);
    switch (flag) {
      case 'o':
        if (a === '-oi') o.ignoreDots = true;
        break; // -oem, -odb ...: accepted, nothing to change
      case 'f':
      case 'r':
        o.sender = a.length > 2 ? a.slice(2) : (argv[++i] ?? null);
        if (o.sender === null) return '-f needs an address';
        break;
      case 'F':
        o.fullName = a.length > 2 ? a.slice(2) : (argv[++i] ?? null);
        break;
      case 'b':
        if (a === '-bm') o.mode = 'deliver';
        else if (a === '-bp') o.mode = 'list';
        else if (a === '-bs') o.mode = 'smtp';
        else return `${a} is not supported (-bm, -bp and -bs are)`;
        break;
      case 'm':
      case 'N':
      case 'B':
      case 'X':
      case 'O':
        if (['N', 'B', 'X', 'O'].includes(flag) && a.length === 2) i++;
        break;
      default:
        return `unknown option ${a}`;
    }
  }
  return o;
}

// Reads the message from stdin. Without -i a line with only "." ends it (the rest of the input is not read), so
// a user typing a message can end it as with sendmail.
function readStdin(limit: number, ignoreDots: boolean): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    let scanned = 0;
    const finish = (b: Buffer) => {
      process.stdin.off('data', onData);
      process.stdin.pause();
      resolve(b);
    };
    const onData = (c: Buffer) => {
      n += c.length;
      if (n > limit) {
        resolve(null);
        process.stdin.destroy();
        return;
      }
      parts.push(c);
      if (ignoreDots) return;
      const all = Buffer.concat(parts);
      // Back two bytes: a "." line may straddle chunks as "\n." + "\r\n" or "\n.\r" + "\n".
      const end = dotLine(all, Math.max(0, scanned - 2));
      if (end >= 0) return finish(all.subarray(0, end));
      scanned = all.length;
    };
    process.stdin.on('data', onData);
    process.stdin.on('end', () => resolve(Buffer.concat(parts)));
    process.stdin.on('error', reject);
  });
}

// Where a line consisting of "." starts in `b` (searching from `from`, a line start or inside a line), or -1.
function dotLine(b: Buffer, from: number): number {
  for (let i = b.indexOf(0x2e, from); i >= 0; i = b.indexOf(0x2e, i + 1)) {
    if (i > 0 && b[i - 1] !== 0x0a) continue;
    const next = b[i + 1];
    if (next === 0x0a || (next === 0x0d && b[i + 2] === 0x0a)) return i;
  }
  return -1;
}

// RFC 5322 §2.2: a field name is printable ASCII except ":", then ":".
const FIELD = /^[\x21-\x39\x3b-\x7e]+:/;

/**
 * Splits a message into header lines and body, with every line end made CRLF. The header section ends at the
 * first empty line (kept at the start of the body) or, as in Postfix's sendmail, at the first line that is not a
 * header field, which then starts the body: `echo text | sendmail user` keeps "text" as the body.
 */
function normalize(raw: Buffer): { headers: string[]; body: Buffer } {
  const text = raw.toString('latin1').replace(/\r?\n/g, '\r\n').replace(/\r(?!\n)/g, '\r\n');
  const withEnd = text.endsWith('\r\n') || text === '' ? text : text + '\r\n';
  const headers: string[] = [];
  let pos = 0;
  while (pos < withEnd.length) {
    const eol = withEnd.indexOf('\r\n', pos);
    const line = withEnd.slice(pos, eol);
    if ((line.startsWith(' ') || line.startsWith('\t')) && headers.length > 0) headers[headers.length - 1] += '\r\n' + line;
    else if (FIELD.test(line)) headers.push(line);
    else break;
    pos = eol + 2;
  }
  return { headers, body: Buffer.from(withEnd.slice(pos), 'latin1') };
}

function headerName(h: string): string {
  return h.slice(0, Math.max(0, h.indexOf(':'))).trim().toLowerCase();
}

// Extracts addresses from To/Cc/Bcc values: "<a@b>" forms and bare addresses separated by commas.
function addressesIn(value: string): string[] {
  const out: string[] = [];
  const noComments = value.replace(/\([^()]*\)/g, ' ').replace(/"(?:[^"\\]|\\.)*"/g, '""');
  for (const part of noComments.split(',')) {
    const angle = /<([^>]*)>/.exec(part);
    const a = (angle ? angle[1]! : part).trim().replace(/^.*:/, '').replace(/;$/, '').trim();
    if (a !== '') out.push(a);
  }
  return out;
}

/** What sendmail's other modes run (wired by the CLI and main.ts). */
export interface SendmailModes {
  /** -bp: the queue listing (mailq). */
  readonly listQueue: (configFile: string | undefined) => Promise<number>;
  /** -bs: an SMTP session on stdin/stdout; resolves with the exit code when it ends. */
  readonly smtpOnStdio: (cfg: Config) => Promise<number>;
}

/** Runs sendmail with `argv`; resolves with the exit code. */
export async function runSendmail(argv: string[], modes: SendmailModes): Promise<number> {
  const o = parseOptions(argv);
  if (typeof o === 'string') {
    process.stderr.write(`sendmail: ${o}\nusage: sendmail [-t] [-i|-oi] [-f SENDER] [RCPT...] | -bp | -bs\n`);
    return EXIT.usage;
  }
  if (o.mode === 'list') return modes.listQueue(o.config);
  let cfg;
  try {
    cfg = loadConfig(configPath(o.config, process.env, process.cwd()));
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`sendmail: config error:\n${e.message}\n`);
      return EXIT.config;
    }
    throw e;
  }
  if (o.mode === 'smtp') return modes.smtpOnStdio(cfg);
  const raw = await readStdin(cfg.smtp.max_message_size, o.ignoreDots);
  if (raw === null) {
    process.stderr.write(`sendmail: message larger than smtp.max_message_size (${cfg.smtp.max_message_size} bytes)\n`);
    return EXIT.dataErr;
  }
  if (raw.includes(0)) {
    process.stderr.write('sendmail: message contains a NUL byte\n');
    return EXIT.dataErr;
  }
  const { headers, body } = normalize(raw);
  const rcptText = [...o.recipients];
  let kept = headers;
  if (o.extract) {
    for (const h of headers) {
      if (['to', 'cc', 'bcc'].includes(headerName(h))) rcptText.push(...addressesIn(h.slice(h.indexOf(':') + 1)));
    }
    kept = headers.filter((h) => headerName(h) !== 'bcc');
  }
  const localUser = userInfo().username;
  const senderText = o.sender ?? `${localUser}@${cfg.server.hostname}`;
  const recipients: EnvelopeRecipient[] = [];
  let utf8 = false;
  for (const t of rcptText) {
    const m = parseMailbox(t.includes('@') ? t : `${t}@${cfg.server.hostname}`, true);
    if (typeof m === 'string') {
      process.stderr.write(`sendmail: bad recipient address "${t}"\n`);
      return EXIT.dataErr;
    }
    utf8 ||= m.utf8;
    const address = mailboxToString(m);
    if (!recipients.some((r) => r.address === address)) recipients.push({ address });
  }
  if (recipients.length === 0) {
    process.stderr.write('sendmail: no recipients (give addresses or use -t)\n');
    return EXIT.usage;
  }
  let sender = '';
  if (senderText !== '' && senderText !== '<>') {
    const m = parseMailbox(senderText.replace(/^<(.*)>$/, '$1'), true);
    if (typeof m === 'string') {
      process.stderr.write(`sendmail: bad sender address "${senderText}"\n`);
      return EXIT.dataErr;
    }
    utf8 ||= m.utf8;
    sender = mailboxToString(m);
  }
  // Local submissions get the fields a message needs (RFC 5322 §3.6): From, Date, Message-ID.
  const names = new Set(kept.map(headerName));
  if (!names.has('from')) kept.push(`From: ${o.fullName ? `${o.fullName.replace(/["\\\r\n]/g, '')} ` : ''}<${sender || `${localUser}@${cfg.server.hostname}`}>`);
  if (!names.has('date')) kept.push(`Date: ${rfc5322Date(new Date())}`);
  if (!names.has('message-id')) kept.push(`Message-ID: <${Date.now().toString(36)}.${randomBytes(6).toString('hex')}@${cfg.server.hostname}>`);
  const message = Buffer.concat([Buffer.from(kept.map((h) => h + '\r\n').join('') + '\r\n', 'latin1'), body.subarray(body.subarray(0, 2).toString() === '\r\n' ? 2 : 0)]);
  const envelope = {
    sender,
    recipients,
    smtputf8: utf8,
    client: { ip: '127.0.0.1', port: 0, helo: 'localhost', protocol: 'local' },
  };
  const store = new QueueStore(cfg.queue.dir);
  const res = await submit(store.path('private', 'cleanup'), envelope, [message]);
  if (res.ok) return EXIT.ok;
  if (res.unavailable) {
    process.stderr.write(`sendmail: Palisade is not running (${res.text}); message not sent\n`);
    return EXIT.tempFail;
  }
  process.stderr.write(`sendmail: message refused: ${res.code} ${res.text}\n`);
  return res.code >= 500 ? EXIT.dataErr : EXIT.tempFail;
}


