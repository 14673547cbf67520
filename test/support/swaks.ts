// SPDX-License-Identifier: MIT
// swaks as a test client: run one transaction against a server, return the 250 reply's queue ID and the DATA
// bytes exactly as swaks put them on the wire (read back from its transcript).

import assert from 'node:assert/strict';
import { runPeer } from './peers.ts';

export const SWAKS = '/usr/bin/swaks';

/** What one swaks transaction sent and got. */
export interface SwaksResult {
  /** The ID in "250 ... queued as ID" (Palisade's 16 characters, or Postfix's hex). */
  readonly qid: string;
  /** The DATA bytes swaks sent, CRLF line ends, still dot-stuffed, without the final ".". */
  readonly wire: Buffer;
  readonly transcript: string;
}

/** Runs swaks against 127.0.0.1:port with `args` (--from/--to/--data ...); fails unless it exits 0. */
export async function swaks(port: number, args: readonly string[]): Promise<SwaksResult> {
  const r = await runPeer(SWAKS, ['--server', '127.0.0.1', '--port', String(port), '--helo', 'client.test', '--timeout', '20', ...args], { timeoutMs: 30_000 });
  assert.equal(r.code, 0, `swaks failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  const transcript = r.stdout;
  const qid = /^<- {1,2}250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$/m.exec(transcript)?.[1];
  assert.ok(qid !== undefined, `no "queued as" reply in the swaks transcript:\n${transcript}`);
  // Client lines are " -> LINE"; the message is every client line between the 354 reply and the lone ".".
  const lines = transcript.split(/\r?\n/);
  const start = lines.findIndex((l) => /^<- {1,2}354 /.test(l));
  assert.ok(start >= 0, 'no 354 in the swaks transcript');
  const data: string[] = [];
  let ended = false;
  for (const l of lines.slice(start + 1)) {
    if (!l.startsWith(' -> ')) continue;
    const line = l.slice(4);
    if (line === '.') {
      ended = true;
      break;
    }
    data.push(line);
  }
  assert.ok(ended, 'no end-of-data line in the swaks transcript');
  return { qid, wire: Buffer.from(data.map((l) => l + '\r\n').join(''), 'utf8'), transcript };
}

/** RFC 5321 §4.5.2: the receiver removes one leading dot from every line that starts with one. */
export function unstuff(wire: Buffer): Buffer {
  return Buffer.from(wire.toString('latin1').replace(/^\./gm, ''), 'latin1');
}

/** CRLF → LF, as Postfix, Dovecot and smtp-sink store messages. */
export function toLf(b: Buffer | string): string {
  return (typeof b === 'string' ? b : b.toString('latin1')).replace(/\r\n/g, '\n');
}
