// SPDX-License-Identifier: MIT
// Alias files in the classic aliases(5) format: "name: target, target", continuation lines start with
// whitespace, "#" comments. Parsing only; expansion belongs to local delivery.

import { readFileSync } from 'node:fs';

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
    const targets = l.slice(colon + 1).split(',').map((t) => t.trim()).filter((t) => t !== '');
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

/** Reads an alias file ("file:PATH" or a path). Throws when unreadable. */
export function readAliases(spec: string): { entries: AliasEntry[]; problems: AliasProblem[] } {
  return parseAliases(readFileSync(spec.replace(/^file:/, ''), 'utf8'));
}
