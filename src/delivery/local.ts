// SPDX-License-Identifier: MIT
// Local delivery: alias expansion (aliases(5), :include:, depth limit, cycle detection) and Maildir delivery
// (tmp → fsync → new → fsync dir; LF line ends) with Return-Path: and Delivered-To:. Alias targets outside
// the local domains are re-injected through cleanup as a new message. "|command" targets of the aliases file
// go to the command agent (src/delivery/command.ts) when [local] allow_commands is on, else bounce 5.7.1, as
// do commands in :include: files and file targets ("/path", not supported).

import { promises as fsp, constants } from 'node:fs';
import { join } from 'node:path';
import { hostname as osHostname } from 'node:os';
import type { DeliveryJob, FailedTarget, JobResult, RecipientResult } from '../core/delivery.ts';
import { isMailboxName, parseMailbox, mailboxToString } from '../core/address.ts';
import type { AliasEntry } from '../lookup/index.ts';
import { splitTargets, type LookupTable } from '../lookup/index.ts';
import { crlfEnd, crlfToLf, messageChunks } from './message.ts';
import { readHeaderSection } from '../queue/index.ts';
import type { OutboundMessage } from './session.ts';
import type { CommandOutcome } from './command.ts';

// Alias expansion stops at this depth (loops that are not exact cycles end here).
export const MAX_ALIAS_DEPTH = 10;

/** What local delivery needs. */
export interface LocalDeps {
  readonly mailboxDir: string;
  readonly localDomains: ReadonlySet<string>;
  readonly aliases: ReadonlyMap<string, AliasEntry>;
  /** Known recipients; empty = every safe local part has a mailbox. */
  readonly recipients: LookupTable;
  readonly hostname: string;
  /** Re-injects a message for non-local alias targets; resolves with the new queue ID. */
  readonly reinject: (sender: string, recipients: string[], msg: OutboundMessage, prefix: string) => Promise<string>;
  /** Reads a :include: file (tests may substitute). */
  readonly readInclude?: (path: string) => Promise<string>;
  /** Runs a "|command" target with the message (LF line ends) on its stdin; absent = commands are disabled. */
  readonly runCommand?: (command: string, env: Record<string, string>, message: AsyncIterable<Buffer>) => Promise<CommandOutcome>;
}

/** A resolved local target; a refused one names the address it concerns (the target, or the alias that led to it). */
type Target =
  | { kind: 'mailbox'; user: string; address: string }
  | { kind: 'remote'; address: string }
  | { kind: 'command'; command: string; address: string }
  | { kind: 'refused'; dsn: string; reason: string; address: string };

function localPart(address: string): { local: string; domain: string } {
  const at = address.lastIndexOf('@');
  const l = address.slice(0, at);
  return { local: (l.startsWith('"') ? l.slice(1, -1).replace(/\\(.)/g, '$1') : l).toLowerCase(), domain: address.slice(at + 1).toLowerCase() };
}

/** Expands one address through the aliases into final targets. */
export async function expand(address: string, deps: LocalDeps, depth = 0, seen: Set<string> = new Set()): Promise<Target[]> {
  const { local, domain } = localPart(address);
  if (!deps.localDomains.has(domain)) return [{ kind: 'remote', address }];
  const alias = deps.aliases.get(local);
  if (alias !== undefined && !seen.has(local)) {
    if (depth >= MAX_ALIAS_DEPTH) return [{ kind: 'refused', dsn: '5.4.6', reason: `alias expansion of ${address} deeper than ${MAX_ALIAS_DEPTH}`, address }];
    const next = new Set(seen).add(local);
    const out: Target[] = [];
    for (const t of alias.targets) out.push(...(await expandTarget(t, `${local}@${domain}`, deps, depth + 1, next, null)));
    return out;
  }
  // A name that expands to itself (e.g. "root: root, backup@x") is delivered to the mailbox (aliases(5)).
  if (deps.recipients.size > 0 && !deps.recipients.has(local) && !deps.recipients.has(`${local}@${domain}`) && local !== 'postmaster' && alias === undefined) {
    return [{ kind: 'refused', dsn: '5.1.1', reason: `user unknown: ${address}`, address }];
  }
  if (!isMailboxName(local)) return [{ kind: 'refused', dsn: '5.1.3', reason: `unsafe mailbox name "${local}"`, address }];
  return [{ kind: 'mailbox', user: local, address }];
}

// `owner` = the alias whose target this is (name@domain); `source` = the :include: file it was read from.
async function expandTarget(t: string, owner: string, deps: LocalDeps, depth: number, seen: Set<string>, source: string | null): Promise<Target[]> {
  const domain = owner.slice(owner.lastIndexOf('@') + 1);
  if (t.startsWith('|')) {
    if (deps.runCommand === undefined) return [{ kind: 'refused', dsn: '5.7.1', reason: 'delivery to commands is disabled', address: owner }];
    // As Postfix's default: an include file may belong to someone other than the one who wrote the aliases.
    if (source !== null) return [{ kind: 'refused', dsn: '5.7.1', reason: 'commands in :include: files are not allowed', address: owner }];
    const command = t.slice(1).trim();
    if (command === '') return [{ kind: 'refused', dsn: '5.3.5', reason: `empty command in alias ${owner}`, address: owner }];
    return [{ kind: 'command', command, address: owner }];
  }
  if (t.startsWith('/')) return [{ kind: 'refused', dsn: '5.7.1', reason: 'delivery to files is disabled', address: owner }];
  if (t.toLowerCase().startsWith(':include:')) {
    const path = t.slice(9).trim();
    // An include file counts as a level of expansion, and one already being expanded is not read again (a file
    // that includes itself, directly or through others, would otherwise be read without end).
    const key = `:include:${path}`;
    if (seen.has(key)) return [];
    if (depth >= MAX_ALIAS_DEPTH) return [{ kind: 'refused', dsn: '5.4.6', reason: `alias expansion through ${path} deeper than ${MAX_ALIAS_DEPTH}`, address: owner }];
    seen = new Set(seen).add(key);
    depth++;
    let text: string;
    try {
      text = await (deps.readInclude ?? ((p) => fsp.readFile(p, 'utf8')))(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      // Outside the read grants (src/master: a file an untrusted include file names): it never will be read.
      if (code === 'ERR_ACCESS_DENIED') return [{ kind: 'refused', dsn: '5.7.1', reason: `${path} may not be included (only files the aliases name, or that include files only root can change name)`, address: owner }];
      return [{ kind: 'refused', dsn: '4.3.0', reason: `cannot read ${path}: ${code}`, address: owner }];
    }
    const out: Target[] = [];
    for (const line of text.split('\n')) {
      for (const x of splitTargets(line.replace(/#.*/, ''))) out.push(...(await expandTarget(x, owner, deps, depth, seen, path)));
    }
    return out;
  }
  const addr = t.replace(/^<(.*)>$/, '$1');
  const m = parseMailbox(addr.includes('@') ? addr : `${addr}@${domain}`, true);
  // An include file's text is not repeated (replies reach the log and DSNs; the file may hold anything).
  if (typeof m === 'string') return [{ kind: 'refused', dsn: '5.1.3', reason: source === null ? `bad alias target "${t}"` : `bad address in ${source}`, address: owner }];
  return expand(mailboxToString(m), deps, depth, seen);
}

let counter = 0;

/** Writes one message into <mailboxDir>/<user>/ as a Maildir file; durable when it resolves. */
export async function deliverMaildir(deps: LocalDeps, user: string, prefix: string, msg: OutboundMessage): Promise<void> {
  const box = join(deps.mailboxDir, user);
  for (const d of ['tmp', 'new', 'cur']) await fsp.mkdir(join(box, d), { recursive: true, mode: 0o700 });
  const name = `${Date.now()}.P${process.pid}Q${++counter}.${osHostname().replace(/[/:]/g, '_')}`;
  const tmp = join(box, 'tmp', name);
  const fh = await fsp.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    // The queue holds the message with CRLF line ends (SMTP's form); a Maildir file has LF ones.
    const eol = { cr: false };
    await fh.write(prefix.replaceAll('\r\n', '\n'));
    for await (const chunk of messageChunks(msg.file, msg.offset, msg.length)) await fh.write(crlfToLf(chunk as Buffer, eol));
    await fh.write(crlfEnd(eol));
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  await fsp.rename(tmp, join(box, 'new', name));
  const dir = await fsp.open(join(box, 'new'), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** Delivers a job locally; one result per recipient. */
export async function deliverLocal(job: DeliveryJob, msg: OutboundMessage, deps: LocalDeps): Promise<JobResult> {
  const results: RecipientResult[] = [];
  // Delivered-To: fields this message already carries: delivering to one of them again is a loop.
  const head = msg.length > 0 ? (await readHeaderSection(msg.file, msg.offset, msg.length)).toString('latin1') : '';
  const deliveredTo = new Set([...head.matchAll(/^Delivered-To:[ \t]*(.+?)\r?$/gim)].map((m) => m[1]!.trim().toLowerCase()));
  // One copy per mailbox and per forwarding address for the whole job, however many recipients or aliases
  // lead there (aliases(5) duplicate elimination; Postfix local(8) does the same).
  const delivered = new Set<string>();
  const forwarded = new Set<string>();
  // A command runs once per message and alias (its environment is the alias's), however many recipients
  // lead there.
  const commandRuns = new Map<string, CommandOutcome>();
  for (const r of job.recipients) {
    if (deliveredTo.has(r.address.toLowerCase())) {
      results.push({ index: r.index, status: 'bounced', dsn: '5.4.6', reply: `mail forwarding loop for ${r.address} (Delivered-To: already present)`, relay: 'local' });
      continue;
    }
    const targets = await expand(r.address, deps);
    const refused = targets.filter((t) => t.kind === 'refused') as Extract<Target, { kind: 'refused' }>[];
    const temp = refused.find((t) => t.dsn.startsWith('4'));
    if (temp) {
      results.push({ index: r.index, status: 'deferred', dsn: temp.dsn, reply: temp.reason, relay: 'local' });
      continue;
    }
    if (targets.length === 0) {
      // An alias whose expansion ends nowhere (only include files already being read): nothing to deliver to,
      // which must not pass for a delivery.
      results.push({ index: r.index, status: 'bounced', dsn: '5.4.6', reply: `alias expansion of ${r.address} yields no recipient (a loop of include files?)`, relay: 'local' });
      continue;
    }
    // Commands first: one that says "try again" defers the recipient before anything else is delivered for it
    // (a retry then repeats only the commands that had succeeded).
    const failed: FailedTarget[] = refused.map((x) => ({ address: x.address, dsn: x.dsn, reply: x.reason }));
    let commands = 0;
    let deferredBy: CommandOutcome | null = null;
    for (const t of targets) {
      if (t.kind !== 'command') continue;
      const key = `${t.address}\n${t.command}`;
      let o = commandRuns.get(key);
      if (o === undefined) {
        o = await runCommand(deps, t, r.address, job, msg);
        commandRuns.set(key, o);
      }
      if (o.status === 'deferred') {
        deferredBy = o;
        break;
      }
      if (o.status === 'bounced') failed.push({ address: t.address, dsn: o.dsn, reply: o.reply });
      else commands++;
    }
    if (deferredBy !== null) {
      results.push({ index: r.index, status: 'deferred', dsn: deferredBy.dsn, reply: deferredBy.reply, relay: 'local' });
      continue;
    }
    if (failed.length === targets.length) {
      results.push({ index: r.index, status: 'bounced', dsn: failed[0]!.dsn, reply: failed.map((x) => x.reply).join('; '), relay: 'local', ...targetsOf(r.address, failed) });
      continue;
    }
    try {
      const done = new Set<string>();
      let dup = 0;
      for (const t of targets) {
        if (t.kind !== 'mailbox' || done.has(t.user)) continue;
        if (delivered.has(t.user)) {
          dup++;
          continue;
        }
        done.add(t.user);
        // RFC 5321 §4.4: Return-Path at final delivery; Delivered-To marks the mailbox (loop detection).
        const prefix = `Return-Path: <${job.sender}>\r\nDelivered-To: ${t.address}\r\n`;
        await deliverMaildir(deps, t.user, prefix, msg);
        delivered.add(t.user);
      }
      const remote = [...new Set(targets.flatMap((t) => (t.kind === 'remote' && !forwarded.has(t.address) ? [t.address] : [])))];
      let note = '';
      if (remote.length > 0) {
        const qid = await deps.reinject(job.sender, remote, msg, `Delivered-To: ${r.address}\r\n`);
        note = `; forwarded as ${qid}`;
        for (const a of remote) forwarded.add(a);
      }
      if (commands > 0) note += `; ${commands} command(s)`;
      if (dup > 0) note += `; ${dup} duplicate(s) already delivered in this message`;
      const to = `${done.size > 0 ? `maildir (${[...done].join(', ')})` : 'aliases'}${note}`;
      // A target that failed for good is reported to the sender (a bounce naming it), even though the alias's
      // other targets have the message: as with Postfix, where each failed member bounces.
      if (failed.length > 0) results.push({ index: r.index, status: 'bounced', dsn: failed[0]!.dsn, reply: `${failed.map((x) => x.reply).join('; ')}; delivered to the other targets: ${to}`, relay: 'local', ...targetsOf(r.address, failed) });
      else results.push({ index: r.index, status: 'sent', dsn: '2.0.0', reply: `delivered to ${to}`, relay: 'local' });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      results.push({ index: r.index, status: 'deferred', dsn: code === 'ENOSPC' ? '4.3.1' : '4.3.0', reply: `mailbox write failed: ${code}`, relay: 'local' });
    }
  }
  return { results, destinationFailed: false };
}

// The failed targets for the DSN, one per address (an alias's commands all carry the alias's), when they are
// not just the recipient itself (an unknown user, say).
function targetsOf(recipient: string, failed: readonly FailedTarget[]): { targets?: readonly FailedTarget[] } {
  if (!failed.some((x) => x.address.toLowerCase() !== recipient.toLowerCase())) return {};
  const by = new Map<string, FailedTarget>();
  for (const x of failed) {
    const key = x.address.toLowerCase();
    const seen = by.get(key);
    by.set(key, seen === undefined ? x : { ...seen, reply: `${seen.reply}; ${x.reply}` });
  }
  return { targets: [...by.values()] };
}

/**
 * Runs one command target through the command agent: the message with LF line ends after a From_ line,
 * Return-Path:, X-Original-To: and Delivered-To: (what Postfix's local(8) gives a command), and the
 * recipient's details in the environment.
 */
async function runCommand(deps: LocalDeps, t: Extract<Target, { kind: 'command' }>, original: string, job: DeliveryJob, msg: OutboundMessage): Promise<CommandOutcome> {
  const { local, domain } = localPart(t.address);
  const sender = job.sender === '' ? 'MAILER-DAEMON' : job.sender;
  const prefix = `From ${sender}  ${asctime(new Date())}\nReturn-Path: <${job.sender}>\nX-Original-To: ${original}\nDelivered-To: ${t.address}\n`;
  const env = { SENDER: job.sender, RECIPIENT: t.address, ORIGINAL_RECIPIENT: original, LOCAL: local, DOMAIN: domain, USER: local, LOGNAME: local, QUEUE_ID: job.qid };
  async function* message(): AsyncGenerator<Buffer> {
    yield Buffer.from(prefix, 'utf8');
    const eol = { cr: false };
    for await (const chunk of messageChunks(msg.file, msg.offset, msg.length)) yield crlfToLf(chunk as Buffer, eol);
    const end = crlfEnd(eol);
    if (end.length > 0) yield Buffer.from(end);
  }
  return deps.runCommand!(t.command, env, message());
}

// The date of a From_ line in local time, asctime(3) form: "Sat Nov 28 07:46:09 2026".
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
export function asctime(d: Date): string {
  const two = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())} ${d.getFullYear()}`;
}
