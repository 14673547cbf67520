// SPDX-License-Identifier: MIT
// Alias files in the classic aliases(5) format: "name: target, target", continuation lines start with
// whitespace, "#" comments. Parsing only; expansion belongs to local delivery.

import { readFileSync, statSync } from 'node:fs';

/** One alias and its targets as written. */
export interface AliasEntry {
  readonly name: string;
  readonly targets: readonly string[];
  readonly line: number;
}

/** A problem found in an alias file, with its line. */
export interface AliasProblem {
  readonly line: number;
  readonly message: string;
}

/** Parses alias text; names are lower-cased. Returns entries and problems (duplicates, bad lines). */
export function parseAliases(text: string): { entries: AliasEntry[]; problems: AliasProblem[] } {
  const entries: AliasEntry[] = [];
  const problems: AliasProblem[] = [];
  const seen = new Map<string, number>();
  const logical: { text: string; line: number }[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (/^\s*(#|$)/.test(line)) return;
    if (/^\s/.test(line) && logical.length > 0) logical[logical.length - 1]!.text += ' ' + line.trim();
    else logical.push({ text: line, line: i + 1 });
  });
  for (const { text: l, line } of logical) {
    const colon = l.indexOf(':');
    if (colon <= 0) {
      problems.push({ line, message: 'expected "name: target, ..."' });
      continue;
    }
    const name = l.slice(0, colon).trim().replace(/^"(.*)"$/, '$1').toLowerCase();
    const targets = splitTargets(l.slice(colon + 1));
    if (!/^[^\s@]+$/.test(name)) problems.push({ line, message: `bad alias name "${name}"` });
    else if (targets.length === 0) problems.push({ line, message: `alias "${name}" has no targets` });
    else if (seen.has(name)) problems.push({ line, message: `alias "${name}" repeats line ${seen.get(name)}` });
    else {
      seen.set(name, line);
      entries.push({ name, targets, line });
    }
  }
  return { entries, problems };
}

/**
 * Splits an alias's right-hand side at commas outside double quotes. A quoted command ("|cmd a, b") loses its
 * quotes; other quoting (a quoted local part) is kept for the address parser.
 */
export function splitTargets(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '\\' && quoted && i + 1 < text.length) {
      cur += ch + text[++i]!;
      continue;
    }
    if (ch === '"') quoted = !quoted;
    if (ch === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out
    .map((t) => t.trim())
    .map((t) => (/^"\|.*"$/s.test(t) ? t.slice(1, -1).replace(/\\(.)/g, '$1').trim() : t))
    .filter((t) => t !== '');
}

/** Reads an alias file ("file:PATH" or a path). Throws when unreadable. */
export function readAliases(spec: string): { entries: AliasEntry[]; problems: AliasProblem[] } {
  return parseAliases(readFileSync(spec.replace(/^file:/, ''), 'utf8'));
}

/** What includePaths needs to know of a file. */
export interface IncludeFileInfo {
  readonly isFile: boolean;
  readonly uid: number;
  readonly mode: number;
}

/**
 * The :include: files the delivery agents may read: regular files the alias file names, and those named in turn
 * by include files only root can change (owned by root, not group- or world-writable) — anyone else's include
 * file could otherwise point the grant at any file master can read. Absolute paths, each once.
 */
export function includePaths(
  entries: readonly AliasEntry[],
  read: (path: string) => string = (f) => readFileSync(f, 'utf8'),
  info: (path: string) => IncludeFileInfo | null = statInfo,
): string[] {
  const found = new Set<string>();
  const visit = (targets: readonly string[], depth: number) => {
    for (const t of targets) {
      if (!t.toLowerCase().startsWith(':include:')) continue;
      const path = t.slice(9).trim();
      if (!path.startsWith('/') || found.has(path)) continue;
      const st = info(path);
      if (st === null || !st.isFile) continue;
      found.add(path);
      if (depth >= 10 || st.uid !== 0 || (st.mode & 0o022) !== 0) continue;
      let text: string;
      try {
        text = read(path);
      } catch {
        continue;
      }
      visit(text.split('\n').flatMap((line) => splitTargets(line.replace(/#.*/, ''))), depth + 1);
    }
  };
  for (const e of entries) visit(e.targets, 0);
  return [...found];
}

function statInfo(path: string): IncludeFileInfo | null {
  try {
    const st = statSync(path);
    return { isFile: st.isFile(), uid: st.uid, mode: st.mode };
  } catch {
    return null;
  }
}
