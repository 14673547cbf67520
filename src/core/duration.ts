// SPDX-License-Identifier: MIT
// Durations as written in the config ("500ms", "30s", "5m", "4h", "5d") parsed to milliseconds.

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses a duration string to milliseconds, or returns null when it is not one. */
export function parseDuration(text: string): number | null {
  const m = /^(\d{1,9})(ms|s|m|h|d)$/.exec(text.trim());
  if (m === null) return null;
  return Number(m[1]) * UNITS[m[2]!]!;
}
