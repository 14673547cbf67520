// SPDX-License-Identifier: MIT
// Postfix's smtp-sink as a real next hop: accepts every message on 127.0.0.1:port and dumps each completed
// transaction (only after the final ".") to its own file, which the test reads back. smtp-sink writes the
// dump with LF line ends: its own X-Client-Addr/X-Helo-Args/X-Mail-Args/X-Rcpt-Args records and a
// three-line Received: field, then the message as received (dot-unstuffed), then one empty line.

import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, sleep, waitFor, waitForGreeting } from './net.ts';

export const SMTP_SINK = '/usr/sbin/smtp-sink';

/** One transaction smtp-sink dumped. */
export interface SinkDump {
  readonly file: string;
  /** X-Mail-Args: the MAIL FROM arguments as sent ("<a@b> SIZE=10 BODY=8BITMIME"). */
  readonly mailArgs: string;
  /** X-Rcpt-Args, one per RCPT. */
  readonly rcptArgs: readonly string[];
  readonly helo: string;
  /** The message as received, LF line ends (smtp-sink's own Received: and trailing empty line removed). */
  readonly message: string;
}

/** A running smtp-sink. */
export interface SmtpSink {
  readonly port: number;
  readonly dir: string;
  /** Every dump file so far, parsed. */
  dumps(): SinkDump[];
  /** Number of dump files so far (cheap). */
  count(): number;
  /** Waits until there are at least `n` dumps and none changed for 200 ms, then parses them all. */
  settled(n: number, timeoutMs?: number): Promise<SinkDump[]>;
  stop(): Promise<void>;
}

/** Parses one smtp-sink dump (see the header comment for the format). */
export function parseDump(file: string, text: string): SinkDump {
  const lines = text.split('\n');
  let i = 0;
  let mailArgs = '';
  let helo = '';
  const rcptArgs: string[] = [];
  for (; i < lines.length && !lines[i]!.startsWith('Received: '); i++) {
    const l = lines[i]!;
    if (l.startsWith('X-Mail-Args: ')) mailArgs = l.slice(13);
    else if (l.startsWith('X-Rcpt-Args: ')) rcptArgs.push(l.slice(13));
    else if (l.startsWith('X-Helo-Args: ')) helo = l.slice(13);
  }
  if (i >= lines.length) throw new Error(`${file}: no smtp-sink Received: field`);
  // smtp-sink's Received: spans three lines: "Received: from ...", "\tby ... id N;", "\tdate".
  i += 3;
  const message = lines.slice(i).join('\n');
  if (!message.endsWith('\n')) throw new Error(`${file}: dump does not end with the empty line smtp-sink adds`);
  return { file, mailArgs, rcptArgs, helo, message: message.slice(0, -1) };
}

/** Starts smtp-sink on a free port dumping into a fresh directory; the caller must stop() it in a finally block. */
export async function startSmtpSink(opts: { backlog?: number } = {}): Promise<SmtpSink> {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-e2e-sink-'));
  const root = process.getuid!() === 0;
  const args: string[] = [];
  if (root) {
    // smtp-sink insists on dropping root; the dumps are then written as nobody.
    chownSync(dir, Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim()), 0);
    chmodSync(dir, 0o755);
    args.push('-u', 'nobody');
  }
  const port = await freePort();
  // %H%M%S. + smtp-sink's random hex: one file per transaction, written only once "." has been received.
  args.push('-h', 'sink.test', '-m', '500', '-d', join(dir, '%H%M%S.'), `127.0.0.1:${port}`, String(opts.backlog ?? 256));
  const proc = spawn(SMTP_SINK, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exited = new Promise<void>((r) => proc.on('exit', () => r()));
  const files = () => readdirSync(dir).filter((f) => !f.startsWith('.')).sort();
  const sink: SmtpSink = {
    port,
    dir,
    count: () => files().length,
    dumps: () => files().map((f) => parseDump(join(dir, f), readFileSync(join(dir, f), 'latin1'))),
    async settled(n, timeoutMs = 10_000) {
      // Sizes of every dump: equal twice in a row, 200 ms apart, means no dump is still being written.
      const snapshot = () => files().map((f) => `${f}:${statSync(join(dir, f)).size}`).join(' ');
      let last = '';
      await waitFor(`${n} settled smtp-sink dumps`, async () => {
        if (files().length < n) return undefined;
        const now = snapshot();
        if (now === last) return true;
        last = now;
        await sleep(200);
        return snapshot() === now ? true : undefined;
      }, timeoutMs);
      return sink.dumps();
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const killer = setTimeout(() => proc.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(killer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await Promise.race([
      waitForGreeting(port, 'smtp-sink'),
      exited.then(() => { throw new Error(`smtp-sink exited at start: ${stderr.slice(-500)}`); }),
    ]);
  } catch (e) {
    await sink.stop();
    throw e;
  }
  return sink;
}
