// SPDX-License-Identifier: MIT
// Test helper: cut a byte string into chunks, as a network would, for "any split gives the same result" properties.

/** Splits `b` at the given offsets (sorted, deduplicated, clamped to the buffer). */
export function split(b: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.max(0, Math.min(b.length, c))))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(b.subarray(prev, p));
    prev = p;
  }
  out.push(b.subarray(prev));
  return out;
}
