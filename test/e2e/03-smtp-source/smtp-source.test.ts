// SPDX-License-Identifier: MIT
// Postfix's smtp-source → Palisade at 50 concurrent sessions: every message smtp-source saw acknowledged
// with 250 is in the queue, exactly once, with the bytes smtp-source generated.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade } from '../../support/palisade.ts';
import {
  listQueued, parkingTransport, readQueued, removeDir, requirePeers, runPeer, skipWithoutPeers, splitReceived,
  startParkingHop, tempDir,
} from '../../support/peers.ts';

const SMTP_SOURCE = '/usr/sbin/smtp-source';
const skip = skipWithoutPeers(SMTP_SOURCE);
const SESSIONS = 50;
const MESSAGES = Number(process.env.E2E_SMTP_SOURCE_MESSAGES ?? 2000);
// Not multiples of 80, so the last body line is a short one (exercises the partial-line path).
const LENGTH = 4096;
// Bigger than a socket's high-water mark: smtpd must wait for cleanup to drain while the rest arrives.
const BIG = 102_410;

/** One smtp-source load: sessions in parallel, messages in all, body bytes per message. */
interface Load {
  readonly sessions: number;
  readonly messages: number;
  readonly length: number;
  /** Extra smtp-source options, e.g. -d. */
  readonly extra: readonly string[];
}

/**
 * The body smtp-source generates for `-l length` (postfix smtpstone/smtp-source.c): `length` bytes of "X" cut
 * into 80-byte lines "dXXX...X\r\n" whose first character cycles 1,2,...,9,0, the remainder as a last line
 * closed by CRLF.
 */
function smtpSourceBody(length: number): Buffer {
  const b = Buffer.alloc(length, 'X');
  for (let i = 80; i < length; i += 80) {
    b[i - 80] = '0123456789'.charCodeAt((i / 80) % 10);
    b[i - 2] = 0x0d;
    b[i - 1] = 0x0a;
  }
  return Buffer.concat([b, Buffer.from('\r\n')]);
}

/** The headers smtp-source writes before the body (Date and Message-Id vary per message). */
const HEADERS = /^From: <src@example\.com>\r\nTo: <rcpt@remote\.test>\r\nDate: [^\r\n]+\r\nMessage-Id: <[^\r\n>]+>\r\n\r\n/;

/** Runs smtp-source and returns how many DATA commands it saw complete (its -c counter). */
async function source(port: number, load: Load): Promise<number> {
  const r = await runPeer(SMTP_SOURCE, [
    '-c', '-s', String(load.sessions), '-m', String(load.messages), '-l', String(load.length), ...load.extra,
    '-M', 'client.test', '-f', 'src@example.com', '-t', 'rcpt@remote.test', `127.0.0.1:${port}`,
  ], { timeoutMs: 60_000 });
  // smtp-source exits non-zero on any reply other than the expected positive one (no -A).
  assert.equal(r.code, 0, `smtp-source failed (${r.code}): ${r.stderr.slice(-1000)}`);
  // -c prints "\r1\r2...\rN\n": the last number is the count of completed DATA commands.
  const counts = r.stdout.split(/[\r\n]+/).filter((s) => /^\d+$/.test(s));
  return Number(counts.at(-1) ?? 0);
}

/** Starts Palisade, runs the smtp-source load, stops Palisade, and checks every queued message. */
async function loadAndVerify(load: Load): Promise<void> {
  requirePeers(SMTP_SOURCE);
  const dir = tempDir('palisade-e2e-source-');
  const hop = await startParkingHop();
  const p = await startPalisade({
    dir,
    smtp: 'max_sessions = 200\nmax_sessions_per_ip = 0\n',
    toml: parkingTransport(hop.port, ['remote.test']),
  });
  let acked: number;
  try {
    acked = await source(p.port, load);
  } finally {
    // Stopping first freezes the queue: nothing moves while it is read.
    assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM after the load');
    await hop.close();
  }
  try {
    assert.equal(acked, load.messages, 'smtp-source saw every DATA acknowledged');
    const entries = await listQueued(p.spool);
    assert.equal(entries.length, acked, 'exactly one queued message per acknowledged DATA');
    assert.equal(new Set(entries.map((e) => e.id)).size, entries.length, 'queue IDs are unique');
    const body = smtpSourceBody(load.length);
    for (const e of entries) {
      assert.equal(e.envelope.sender, 'src@example.com');
      assert.deepEqual(e.recipients.map((r) => r.address), ['rcpt@remote.test']);
      const q = await readQueued(p.spool, e.id);
      const { received, rest } = splitReceived(q.message);
      assert.match(received, new RegExp(`^Received: from client\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby mx\\.test \\(Palisade\\) with SMTP id ${e.id}\\r\\n`));
      const text = rest.toString('latin1');
      const h = HEADERS.exec(text);
      assert.ok(h !== null, `${e.id}: unexpected header section ${JSON.stringify(text.slice(0, 300))}`);
      assert.ok(rest.subarray(h[0].length).equals(body), `${e.id}: body differs from smtp-source's ${load.length}-byte pattern`);
    }
  } finally {
    removeDir(dir);
  }
}

test(`smtp-source, ${SESSIONS} sessions, one message per connection: every acknowledged message is queued byte for byte`, { skip }, async () => {
  await loadAndVerify({ sessions: SESSIONS, messages: MESSAGES, length: LENGTH, extra: [] });
});

test(`smtp-source -d, ${SESSIONS} sessions reusing their connection: every acknowledged message is queued byte for byte`, { skip }, async () => {
  await loadAndVerify({ sessions: SESSIONS, messages: MESSAGES, length: LENGTH, extra: ['-d'] });
});

test('smtp-source with 100 KB messages, 1 and 10 sessions: no message stalls in DATA, every one is queued byte for byte', { skip }, async () => {
  await loadAndVerify({ sessions: 1, messages: 100, length: BIG, extra: [] });
  await loadAndVerify({ sessions: 10, messages: 300, length: BIG, extra: [] });
});
