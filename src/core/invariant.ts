// SPDX-License-Identifier: MIT
// invariant: a broken invariant is a bug; throw so the process restarts (like Postfix's msg_panic).

/** Throws when `cond` is false; use only for conditions that cannot happen unless the code is wrong. */
export function invariant(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(`invariant failed: ${msg}`);
}
