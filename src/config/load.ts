// SPDX-License-Identifier: MIT
// Loading: TOML text → validated config with placeholders resolved; errors name the key and the line.

import { readFileSync, existsSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { configSchema, LATER_SECTIONS, type RawConfig } from './schema.ts';
import { parseDomain } from '../core/address.ts';

/** The effective configuration: every default applied, every path absolute. Frozen. */
export type Config = RawConfig & { readonly source: string };

/** A config problem; `exitCode` is 78 (EX_CONFIG) per the contract. */
export class ConfigError extends Error {
  readonly exitCode = 78;
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Picks the config path: --config, else PALISADE_CONFIG, else ./palisade.toml if present, else none. */
export function configPath(flag: string | undefined, env: NodeJS.ProcessEnv, cwd: string): string | null {
  if (flag !== undefined && flag !== '') return resolve(cwd, flag);
  if (env.PALISADE_CONFIG) return resolve(cwd, env.PALISADE_CONFIG);
  const local = resolve(cwd, 'palisade.toml');
  return existsSync(local) ? local : null;
}

/** Reads and validates the file at `path` (or the built-in defaults when null). Throws ConfigError. */
export function loadConfig(path: string | null, cwd: string = process.cwd()): Config {
  let text = '';
  if (path !== null) {
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`);
    }
  }
  return parseConfig(text, path ?? '(built-in defaults)', cwd);
}

/** Validates TOML text; `name` labels errors. Throws ConfigError naming the key and line. */
export function parseConfig(text: string, name: string, cwd: string): Config {
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (e) {
    if (e instanceof TomlError) throw new ConfigError(`${name}:${e.line}: TOML syntax error: ${e.message.split('\n')[0]}`);
    throw new ConfigError(`${name}: ${(e as Error).message}`);
  }
  for (const sec of Object.keys(doc)) {
    if (Object.hasOwn(LATER_SECTIONS, sec)) {
      throw new ConfigError(`${name}:${lineOf(text, [sec])}: [${sec}] is not supported by this build yet (${LATER_SECTIONS[sec]})`);
    }
  }
  const parsed = configSchema.safeParse(doc);
  if (!parsed.success) {
    const lines: string[] = [];
    for (const issue of parsed.error.issues) {
      let path = issue.path.map(String);
      let msg = issue.message;
      if (issue.code === 'unrecognized_keys') {
        for (const k of issue.keys) {
          const p = [...path, k];
          lines.push(`${name}:${lineOf(text, p)}: unknown key "${p.join('.')}"`);
        }
        continue;
      }
      // A refused table key (e.g. in [transport]): zod reports "Invalid key"; the key's own rule says why.
      if (issue.code === 'invalid_key' && issue.issues.length > 0) msg = `bad key: ${issue.issues[0]!.message}`;
      if (path.length === 0) path = ['(root)'];
      lines.push(`${name}:${lineOf(text, path)}: ${path.join('.')}: ${msg}`);
    }
    throw new ConfigError(lines.join('\n'));
  }
  return resolveConfig(parsed.data, name, cwd);
}

function resolveConfig(raw: RawConfig, name: string, cwd: string): Config {
  const hostname = raw.server.hostname !== '' ? raw.server.hostname : osHostname();
  const dataDir = resolve(cwd, raw.server.data_dir);
  const hostDomain = parseDomain(hostname, true);
  const domains = raw.local.domains.length > 0 ? raw.local.domains.map((d) => parseDomain(d, true)!) : uniq(['localhost', ...(hostDomain ? [hostDomain] : [])]);
  if (raw.delivery.initial_concurrency > raw.delivery.concurrency) {
    throw new ConfigError(`${name}: delivery.initial_concurrency (${raw.delivery.initial_concurrency}) exceeds delivery.concurrency (${raw.delivery.concurrency})`);
  }
  const recipients = typeof raw.local.recipients === 'string' && raw.local.recipients.startsWith('file:')
    ? 'file:' + resolve(cwd, raw.local.recipients.slice(5))
    : raw.local.recipients;
  const cfg: Config = {
    ...raw,
    server: { ...raw.server, hostname, data_dir: dataDir },
    local: {
      ...raw.local,
      domains,
      recipients,
      aliases: raw.local.aliases === '' ? '' : 'file:' + resolve(cwd, raw.local.aliases.slice(5)),
      mailbox_dir: resolve(dataDir, raw.local.mailbox_dir === '' ? 'mail' : raw.local.mailbox_dir),
    },
    relay: { ...raw.relay, domains: raw.relay.domains.map((d) => parseDomain(d, true)!) },
    queue: { ...raw.queue, dir: raw.queue.dir === '' ? resolve(dataDir, 'spool') : resolve(cwd, raw.queue.dir) },
    source: name,
  };
  return deepFreeze(cfg);
}

function uniq(xs: string[]): string[] {
  return [...new Set(xs)];
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/** Best-effort line number of a key path in TOML text ("?" when it cannot be found, e.g. a default). */
export function lineOf(text: string, path: readonly string[]): string {
  const lines = text.split('\n');
  if (path.length === 0) return '?';
  // Table headers with their names (quotes dropped): [delivery.destinations."example.org"] → delivery.destinations.example.org.
  const headers: { line: number; name: string }[] = [];
  lines.forEach((raw, i) => {
    const h = /^\[\s*((?:"[^"]*"|[^\]"])+?)\s*\]/.exec(raw.trim());
    if (h !== null) headers.push({ line: i, name: h[1]!.replace(/"/g, '').replace(/\s*\.\s*/g, '.') });
  });
  const full = path.join('.');
  // The key's own table ([smtp.x] for the key "x" of [smtp]).
  const own = headers.find((h) => h.name === full);
  if (own !== undefined) return String(own.line + 1);
  // The nearest enclosing table that has the key (or, for an inline table, the key holding it).
  let fallback = -1;
  for (let k = path.length - 1; k >= 1; k--) {
    const prefix = path.slice(0, k).join('.');
    for (const h of headers.filter((x) => x.name === prefix)) {
      if (fallback < 0) fallback = h.line;
      const end = headers.find((x) => x.line > h.line)?.line ?? lines.length;
      for (let i = h.line + 1; i < end; i++) {
        const key = topKey(lines[i]!.trim());
        if (key === path[k] || key === path.slice(k).join('.')) return String(i + 1);
      }
    }
  }
  // A key of the top level, or a dotted key before any table header (smtp.max_errors = 0).
  const firstHeader = headers[0]?.line ?? lines.length;
  for (let i = 0; i < firstHeader; i++) {
    const key = topKey(lines[i]!.trim());
    if (key !== null && (key === full || key === path[0])) return String(i + 1);
  }
  return fallback >= 0 ? String(fallback + 1) : '?';
}

// The key a "key = value" line assigns (bare or quoted), or null. No regex is built from config text.
function topKey(line: string): string | null {
  const k = /^("([^"]*)"|[A-Za-z0-9_.*-]+)\s*=/.exec(line);
  return k === null ? null : (k[2] ?? k[1]!);
}
