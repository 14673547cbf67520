// SPDX-License-Identifier: MIT
// Lookup tables behind one interface: inline lists and "file:PATH" (one key per line, "#" comments).

import { readFileSync } from 'node:fs';

/** A set of keys; lookups are case-insensitive (keys are stored lower-cased). */
export interface LookupTable {
  /** True when the table lists `key`. */
  has(key: string): boolean;
  /** Number of keys (0 = the table is empty). */
  readonly size: number;
}

/** Builds a table from an inline list or "file:PATH". Throws with the path when the file cannot be read. */
export function createTable(spec: readonly string[] | string): LookupTable {
  const keys = new Set<string>();
  const items = typeof spec === 'string' ? readTableFile(spec.replace(/^file:/, '')) : spec;
  for (const k of items) keys.add(k.trim().toLowerCase());
  keys.delete('');
  return { has: (key) => keys.has(key.toLowerCase()), size: keys.size };
}

function readTableFile(path: string): string[] {
  const text = readFileSync(path, 'utf8');
  const out: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    // "key value" lines (Postfix style) count by their key.
    if (line !== '') out.push(line.split(/\s+/)[0]!);
  }
  return out;
}
