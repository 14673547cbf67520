// SPDX-License-Identifier: MIT
// Queue helpers for integration tests: read what Palisade wrote to its spool, the way qmgr and the CLI do.

import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { QueueStore, type MessageState, type ParsedQueueFile } from '../../src/queue/index.ts';

/**
 * Config that keeps accepted mail in the queue so tests can read it: every domain (local ones included) routes
 * to an LMTP socket that does not exist, so each attempt defers, and the next retry is an hour away.
 * Append it to startPalisade's `toml`; do not repeat [transport], [queue] or [delivery] there.
 */
export const KEEP_QUEUED = `
[transport]
"*" = "lmtp:unix:/nonexistent-palisade-test/lmtp.sock"
"mx.test" = "lmtp:unix:/nonexistent-palisade-test/lmtp.sock"
"localhost" = "lmtp:unix:/nonexistent-palisade-test/lmtp.sock"
"relay.test" = "lmtp:unix:/nonexistent-palisade-test/lmtp.sock"
[queue]
retry_min = "1h"
retry_max = "1h"
[delivery]
workers = 1
`;

/**
 * File names in one spool directory (tmp, incoming, active ...); [] when it does not exist. In incoming/ only
 * messages: cleanup's reserved files (write-only until a message is committed in them) are left out.
 */
export function spoolFiles(spool: string, dir: MessageState | 'tmp'): string[] {
  try {
    const names = readdirSync(join(spool, dir)).sort();
    return dir === 'incoming' ? names.filter((n) => isCommitted(join(spool, dir, n))) : names;
  } catch {
    return [];
  }
}

function isCommitted(path: string): boolean {
  try {
    return (statSync(path).mode & 0o600) === 0o600;
  } catch {
    return false;
  }
}

/**
 * Files holding part of a message that was never committed: anything in tmp/, and reserved files in incoming/
 * that a message has begun to stream into (not readable yet, not empty).
 */
export function partialFiles(spool: string): string[] {
  const reserved = (() => {
    try {
      return readdirSync(join(spool, 'incoming')).filter((n) => {
        try {
          const st = statSync(join(spool, 'incoming', n));
          return (st.mode & 0o600) !== 0o600 && st.size > 0;
        } catch {
          return false;
        }
      });
    } catch {
      return [];
    }
  })();
  return [...spoolFiles(spool, 'tmp'), ...reserved].sort();
}

/**
 * IDs of every message in the queue's state directories (not tmp/), each once: a message qmgr moves between
 * two of the directory reads (incoming/ → active/) is seen in both.
 */
export function queuedIds(spool: string): string[] {
  return [...new Set((['incoming', 'active', 'deferred', 'hold', 'corrupt'] as const).flatMap((d) => spoolFiles(spool, d)))].sort();
}

/** A queued message as stored: envelope and state records, and the message bytes. */
export async function readQueued(spool: string, id: string): Promise<ParsedQueueFile & { state: MessageState; message: Buffer }> {
  const store = new QueueStore(spool);
  // qmgr may move the file between locate and read: look again then.
  for (let attempt = 0; ; attempt++) {
    const state = await store.locate(id);
    if (state === null) throw new Error(`message ${id} is not in the queue`);
    try {
      const parsed = await store.read(state, id);
      const message = await store.readMessage(state, id);
      return { ...parsed, state, message };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 10) throw e;
    }
  }
}

/** Splits a stored message into its leading Received: field (with folded lines) and the rest. */
export function splitReceived(message: Buffer): { received: string; rest: Buffer } {
  const text = message.toString('latin1');
  const m = /^Received:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*/.exec(text);
  if (m === null) throw new Error(`message does not start with a Received: field: ${JSON.stringify(text.slice(0, 80))}`);
  return { received: m[0], rest: message.subarray(m[0].length) };
}
