// SPDX-License-Identifier: MIT
// Helpers for e2e tests with real peers: skip-or-fail when a peer binary is missing, run a peer process with
// a deadline, park relayed mail so it stays in the queue, and read queued messages back from the spool.

import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { QueueStore, type MessageState, type ParsedQueueFile, type QueueEntry } from '../../src/queue/index.ts';

/** True when running under CI (CI=true or any value other than "", "0", "false"). */
export const IN_CI = !['', '0', 'false'].includes((process.env.CI ?? '').toLowerCase());

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The `skip` option for a test that needs `bins`: a reason when one is missing outside CI, else false.
 * Under CI a missing peer is never a skip; requirePeers() then fails the test.
 */
export function skipWithoutPeers(...bins: string[]): string | false {
  const missing = bins.filter((b) => !executable(b));
  if (missing.length === 0 || IN_CI) return false;
  return `peer not installed: ${missing.join(', ')} (.ci/run installs it; under CI this fails instead)`;
}

/** Fails the test when a peer binary is missing (reached only under CI, or when the skip was not set). */
export function requirePeers(...bins: string[]): void {
  for (const b of bins) assert.ok(executable(b), `${b} is not installed: .ci/run must install it (CI never skips e2e peers)`);
}

/** Output of a finished peer process. */
export interface PeerRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `cmd args` to completion with stdin `input`; kills it (and fails) after `timeoutMs`. */
export function runPeer(cmd: string, args: readonly string[], opts: { input?: string | Buffer; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<PeerRun> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill('SIGKILL');
    }, opts.timeoutMs ?? 60_000);
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    p.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) reject(new Error(`${cmd} did not finish in ${opts.timeoutMs ?? 60_000} ms; stderr: ${stderr.slice(-500)}`));
      else resolve({ code, signal, stdout, stderr });
    });
    p.stdin.on('error', () => {});
    p.stdin.end(opts.input ?? '');
  });
}

/**
 * A next hop that answers every connection with "421 4.3.2" and closes: mail routed to it is deferred and
 * stays in the queue, so a test can read what was queued no matter how fast delivery is.
 */
export async function startParkingHop(): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer((s) => {
    s.on('error', () => {});
    s.end('421 4.3.2 parking hop: try again later\r\n');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** The [transport] section that parks mail for `domains` at the parking hop on `port`. */
export function parkingTransport(port: number, domains: readonly string[]): string {
  return `[transport]\n${domains.map((d) => `"${d}" = "smtp:[127.0.0.1]:${port}"`).join('\n')}\n`;
}

/** A fresh temp directory for one Palisade instance (the caller removes it with removeDir). */
export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Removes a temp directory, ignoring errors. */
export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** One queued message as read back from the spool. */
export interface Queued {
  readonly state: MessageState;
  readonly file: ParsedQueueFile;
  readonly message: Buffer;
}

/** Reads message `id` from the spool under `spool`, wherever it is; fails when it is not queued. */
export async function readQueued(spool: string, id: string): Promise<Queued> {
  const store = new QueueStore(spool);
  const state = await store.locate(id);
  assert.ok(state !== null, `message ${id} is not in the queue at ${spool}`);
  return { state, file: await store.read(state, id), message: await store.readMessage(state, id) };
}

/** Every queued message under `spool` (all states but corrupt). */
export function listQueued(spool: string): Promise<QueueEntry[]> {
  return new QueueStore(spool).list();
}

/** Splits a queued message into its leading Received: field (the one Palisade added) and the rest. */
export function splitReceived(message: Buffer): { received: string; rest: Buffer } {
  const text = message.toString('latin1');
  assert.ok(text.startsWith('Received: '), `queued message does not start with Received:, got ${JSON.stringify(text.slice(0, 60))}`);
  // The field ends at the first CRLF not followed by folding white space.
  const m = /\r\n(?![ \t])/.exec(text);
  assert.ok(m !== null, 'Received: field is not terminated');
  const end = m.index + 2;
  return { received: text.slice(0, end), rest: message.subarray(end) };
}
