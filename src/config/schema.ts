// SPDX-License-Identifier: MIT
// The config schema: every key with its type, default and a doc line (docs/configuration.md is generated from it).

import { z } from 'zod';
import { parseDuration } from '../core/duration.ts';
import { parseCidr } from '../core/cidr.ts';
import { parseDomain } from '../core/address.ts';

// `min` (a duration) where a shorter value, "0s" above all, would turn the limit off or make it fire at once.
const duration = (def: string, doc: string, min = '0s') =>
  z
    .string()
    .refine((s) => parseDuration(s) !== null, { message: 'expected a duration such as "500ms", "30s", "5m", "4h", "5d"' })
    .refine((s) => (parseDuration(s) ?? Infinity) >= parseDuration(min)!, { message: `must be at least "${min}"` })
    .default(def)
    .describe(min === '0s' ? doc : `${doc} (at least ${min})`);

const optionalDuration = (doc: string, min = '0s') =>
  z
    .string()
    .refine((s) => s === '' || parseDuration(s) !== null, { message: 'expected "" or a duration such as "30s"' })
    .refine((s) => s === '' || (parseDuration(s) ?? Infinity) >= parseDuration(min)!, { message: `must be "" or at least "${min}"` })
    .default('')
    .describe(min === '0s' ? doc : `${doc} (at least ${min})`);

// A host or domain name as it may appear in the greeting, EHLO and Received: (no spaces, no line breaks).
const hostName = (doc: string) =>
  z.string().refine((s) => s === '' || parseDomain(s, false) !== null, { message: 'expected "" or a host name such as "mx.example.com"' }).default('').describe(doc);

const int = (def: number, min: number, max: number, doc: string) =>
  z.number().int().min(min).max(max).default(def).describe(doc);

/** "host:port", "[v6]:port"; port 0 = any free port. */
export function parseListen(text: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+|[A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  if (m === null) return null;
  const port = Number(m[3]);
  if (port > 65535) return null;
  return { host: m[1] ?? m[2]!, port };
}

const listenList = (def: string[], doc: string) =>
  z
    .array(z.string().refine((s) => parseListen(s) !== null, { message: 'expected "address:port", e.g. "127.0.0.1:2525" or "[::1]:2525"' }))
    .default(def)
    .describe(doc);

const domainList = (doc: string) =>
  z
    .array(z.string().refine((s) => parseDomain(s, true) !== null, { message: 'expected a domain name' }))
    .default([])
    .describe(doc);

// A destination key as qmgr groups jobs (docs/architecture.md), or ".domain" for every subdomain's.
const DESTINATION = /^(local|lmtp:unix:\/.+|lmtp:[A-Za-z0-9.\[\]:-]+:\d{1,5}|\[[^\]\s]+\]:\d{1,5}|\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?)$/;

const ROUTE = /^(smtp:(\[[^\]]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?|lmtp:(unix:\/.+|[A-Za-z0-9.\[\]:-]+:\d{1,5})|local)$/;

const server = z
  .strictObject({
    hostname: hostName('Name in the greeting, HELO, Received and the self-signed certificate; "" = the OS hostname'),
    user: z.string().default('palisade').describe('Children run as this user when started as root; "" = no privilege drop at all'),
    smtpd_user: z.string().default('palisade-smtpd').describe('smtpd\'s own user (cannot read the queue); shares group "palisade" with `user`'),
    drain_timeout: duration('30s', 'On SIGTERM, sessions may finish for this long, then get 421 4.3.2'),
    data_dir: z.string().default('./var').describe('Default home of spool/, mail/ and tls/, and home of the children\'s compile-cache/, relative to the working directory'),
  })
  .prefault({});

const smtp = z
  .strictObject({
    listen: listenList(['127.0.0.1:2525'], 'Listening addresses of the inbound SMTP service'),
    workers: int(0, 0, 64, 'Number of smtpd processes; 0 = CPU count. As many accept new connections as the load needs'),
    max_message_size: int(10_240_000, 1024, 2 ** 40, 'SIZE advertised and enforced, bytes (552 5.3.4)'),
    max_recipients: int(1000, 1, 100_000, 'Recipients per transaction, then 452 4.5.3 (RFC 5321 §4.5.3.1.8: at least 100)'),
    max_errors: int(20, 1, 10_000, 'Error replies per session before 421 and close'),
    timeout: duration('300s', 'Per command and per DATA block (RFC 5321 §4.5.3.2)', '100ms'),
    max_sessions: int(200, 1, 1_000_000, 'Concurrent sessions over all workers, then 421 4.7.0'),
    max_sessions_per_ip: int(50, 0, 1_000_000, 'Concurrent sessions per client address; 0 = unlimited; trusted_networks exempt'),
    require_helo: z.boolean().default(false).describe('true: MAIL before EHLO/HELO gets 503 5.5.1'),
    max_header_size: int(262_144, 1024, 16_777_216, 'Bytes of the header section, then 552 5.3.4'),
    max_headers: int(1000, 10, 100_000, 'Header fields per message, then 552 5.3.4'),
    max_received_headers: int(50, 1, 1000, 'Received: fields before a message is refused as a loop (554 5.4.6)'),
    max_connection_rate_per_ip: int(0, 0, 1_000_000, 'New connections per client address per minute, then 421 4.7.0; 0 = unlimited; trusted_networks exempt'),
    max_message_rate_per_ip: int(0, 0, 1_000_000, 'Messages (MAIL commands) per client address per minute, then 450 4.7.1; 0 = unlimited; trusted_networks exempt'),
    max_recipient_rate_per_ip: int(0, 0, 10_000_000, 'Accepted recipients per client address per minute, then 450 4.7.1 at RCPT; 0 = unlimited; trusted_networks exempt'),
    stress_threshold: z.number().min(0.1).max(1).default(0.8).describe('Stress mode starts when sessions reach this fraction of max_sessions (ends below 3/4 of that)'),
    stress_timeout: duration('10s', 'Per-command timeout while in stress mode', '100ms'),
    stress_max_errors: int(3, 1, 10_000, 'Error replies per session before 421 while in stress mode'),
  })
  .prefault({});

const local = z
  .strictObject({
    domains: domainList('Domains delivered on this host; default: localhost and the hostname'),
    recipients: z
      .union([z.array(z.string()), z.string().regex(/^file:.+/, { message: 'expected "file:PATH" or a list' })])
      .default([])
      .describe('Known local recipients: local parts or addresses, or "file:PATH" (one per line); [] = every local part exists'),
    aliases: z.string().regex(/^(file:.+)?$/, { message: 'expected "" or "file:PATH"' }).default('').describe('"file:PATH" in aliases(5) format'),
    mailbox_dir: z.string().default('').describe('Maildir per recipient under this directory; "" = <data_dir>/mail'),
    allow_commands: z.boolean().default(false).describe('Deliver to "|command" targets of the aliases file (never to ones in :include: files); off = such targets bounce 5.7.1'),
    command_user: z.string().default('nobody').describe('Commands run as this user when the privilege drop is on; not root, `user` or `smtpd_user`, outside group "palisade"'),
    command_timeout: duration('1000s', 'A command still running after this is killed (its process group) and its recipient bounced 5.3.0', '100ms'),
  })
  .prefault({});

const relay = z
  .strictObject({
    trusted_networks: z
      .array(z.string().refine((s) => parseCidr(s) !== null, { message: 'expected a CIDR network such as "127.0.0.0/8"' }))
      .default(['127.0.0.0/8', '::1/128'])
      .describe('Clients in these networks may relay anywhere'),
    domains: domainList('Domains relayed for anyone (backup MX, gateway)'),
  })
  .prefault({});

const transport = z
  .record(z.string().refine((k) => k === '*' || parseDomain(k.startsWith('.') ? k.slice(1) : k, true) !== null, { message: 'expected a domain, ".domain" or "*"' }), z.string().regex(ROUTE, { message: 'expected smtp:[host]:port, smtp:host, lmtp:host:port, lmtp:unix:/path or local' }))
  .default({})
  .describe('Routes: domain (".domain" = subdomains, "*" = every other) = smtp:[host]:port | lmtp:... | local');

const queue = z
  .strictObject({
    dir: z.string().default('').describe('Queue directory; "" = <data_dir>/spool'),
    retry_min: duration('5m', 'First retry delay; doubles up to retry_max', '100ms'),
    retry_max: duration('1h', 'Longest retry delay (at least retry_min)', '100ms'),
    lifetime: duration('5d', 'A message still undelivered after this is bounced', '100ms'),
    delay_warning: duration('4h', 'Send a delay DSN after this; "0s" = off'),
    scan_interval: duration('5s', 'How often the queue manager looks for new and due messages besides commit notices', '100ms'),
    active_limit: int(10_000, 1, 10_000_000, 'Messages held in the active set at once; the rest wait on disk'),
    min_free_space: int(52_428_800, 0, 2 ** 50, 'Free bytes the spool\'s file system must keep; below it MAIL gets 452 4.3.1 while delivery goes on'),
  })
  .refine((q) => parseDuration(q.retry_max)! >= parseDuration(q.retry_min)!, { message: 'must be at least retry_min', path: ['retry_max'] })
  .prefault({});

const delivery = z
  .strictObject({
    concurrency: int(20, 1, 10_000, 'Parallel deliveries per destination: upper bound of the window'),
    initial_concurrency: int(5, 1, 10_000, 'Starting window per destination'),
    connect_timeout: duration('30s', 'Outbound TCP connect timeout', '100ms'),
    timeout: optionalDuration('"" = RFC 5321 §4.5.3.2 timeouts per stage; a duration = that limit for every reply', '100ms'),
    max_recipients: int(50, 1, 100_000, 'Recipients per outbound transaction'),
    workers: int(0, 0, 64, 'Delivery agent processes (each takes many deliveries at once); 0 = a quarter of the CPU count, at least 1'),
    max_parallel: int(500, 1, 100_000, 'Deliveries in flight over all destinations'),
    connection_cache_time: duration('5s', 'An idle outbound connection is kept this long for the next message to the same destination'),
    connection_reuse_limit: int(100, 1, 1_000_000, 'Transactions per outbound connection before it is closed'),
    destinations: z
      .record(
        z.string().regex(DESTINATION, { message: 'expected a destination as in the logs: "example.org", ".example.org" (its subdomains), "[host]:port", "lmtp:host:port", "lmtp:unix:/path" or "local"' }),
        z.strictObject({
          concurrency: z.number().int().min(1).max(10_000).optional().describe('Upper bound of the window'),
          initial_concurrency: z.number().int().min(1).max(10_000).optional().describe('Starting window'),
          max_recipients: z.number().int().min(1).max(100_000).optional().describe('Recipients per transaction'),
        }),
      )
      .default({})
      .describe('Per destination — the recipient domain, or the [transport] next hop as "[10.0.0.5]:25", "lmtp:unix:/path", "local"; ".example.org" = its subdomains: `{ concurrency, initial_concurrency, max_recipients }` overriding the values above'),
    reply_overrides: z
      .array(z.strictObject({
        pattern: z.string().refine((s) => { try { new RegExp(s, 'i'); return true; } catch { return false; } }, { message: 'expected a regular expression' }),
        action: z.enum(['temporary', 'permanent']),
      }))
      .default([])
      .describe('Remote replies whose text matches `pattern` (case-insensitive) are treated as temporary or permanent, overriding the reply code'),
  })
  .prefault({});

const dns = z
  .strictObject({
    servers: z
      .array(z.string().refine((s) => parseListen(s) !== null || parseCidr(s) !== null, { message: 'expected "address" or "address:port"' }))
      .default([])
      .describe('DNS servers ("127.0.0.1:5353"); [] = /etc/resolv.conf'),
    timeout: duration('5s', 'Per DNS query', '100ms'),
    dnssec: z.boolean().default(true).describe('Trust the AD bit from these servers (DANE)'),
  })
  .prefault({});

const log = z
  .strictObject({
    level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info').describe('Log level'),
  })
  .prefault({});

/** The whole file. Sections not listed here are refused (with the issue that brings them, in the error). */
export const configSchema = z
  .strictObject({ server, smtp, local, relay, transport, queue, delivery, dns, log })
  // Commands must not run with the rights of the queue's owner, of smtpd or of root.
  .refine((c) => !c.local.allow_commands || !['', 'root', c.server.user, c.server.smtpd_user].includes(c.local.command_user), {
    message: 'must name a user other than root, server.user and server.smtpd_user',
    path: ['local', 'command_user'],
  });

/** Raw config as parsed (defaults applied, placeholders not yet resolved). */
export type RawConfig = z.infer<typeof configSchema>;

/** Sections of the contract that arrive with later work; named in the error when a file uses them. */
export const LATER_SECTIONS: Record<string, string> = {
  submissions: 'implicit-TLS submissions arrive with TLS support',
  tls: 'TLS settings arrive with TLS support',
};
