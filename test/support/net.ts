// SPDX-License-Identifier: MIT
// Loopback helpers for tests that start real peers on fixed ports: pick a free port, wait for a greeting,
// stop a process by its own PID, poll for a condition, list a process's children.

import { connect, createServer } from 'node:net';

/** A TCP port on 127.0.0.1 that was free a moment ago (for peers that cannot listen on port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Resolves with the first line a server on 127.0.0.1:port sends, or null when it cannot connect or is silent. */
export function greeting(port: number, timeoutMs = 2000): Promise<string | null> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let buf = '';
    const done = (v: string | null) => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    const t = setTimeout(() => done(null), timeoutMs);
    s.on('error', () => done(null));
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl >= 0) done(buf.slice(0, nl).replace(/\r$/, ''));
    });
    s.on('close', () => done(buf === '' ? null : buf));
  });
}

/** Polls until 127.0.0.1:port greets with 220; throws after `timeoutMs`. */
export async function waitForGreeting(port: number, what: string, timeoutMs = 10_000): Promise<string> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const line = await greeting(port);
    if (line !== null && line.startsWith('220')) return line;
    if (Date.now() > end) throw new Error(`${what} did not greet on 127.0.0.1:${port} (last: ${JSON.stringify(line)})`);
    await sleep(100);
  }
}

/** True while a process with this PID exists (and is not a zombie we could reap). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Sends `signal` to `pid` (ignoring a process already gone). */
export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

/** Waits until `pid` is gone; false after `timeoutMs`. */
export async function waitGone(pid: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (alive(pid)) {
    if (Date.now() > end) return false;
    await sleep(50);
  }
  return true;
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// One implementation of each, shared with the integration harness.
export { waitFor, childProcesses as childrenOf } from './palisade.ts';
