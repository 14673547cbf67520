// SPDX-License-Identifier: MIT
// Start-up plumbing of master: the listening handles it binds for the children (smtp listeners and private/
// sockets), the spool lock and pid-file check that keep one master per spool, the safety check of the
// directories, and the control socket. Failures are StartErrors with the contract's exit codes.

import { readFileSync, rmSync, chmodSync, chownSync, statSync } from 'node:fs';
import { createServer as createNetServer, type Server } from 'node:net';
import * as net from 'node:net';
import { resolve } from 'node:path';
import { createHash } from 'node:crypto';
import { parseListen } from '../config/index.ts';
import { encodeJson, FrameDecoder, framesOrDrop } from '../ipc/index.ts';
import { EXIT } from '../core/exit.ts';
import type { Identities } from './privilege.ts';

/** A failure that ends start-up with a contract exit code. */
export class StartError extends Error {
  readonly exitCode: number;
  constructor(msg: string, exitCode: number) {
    super(msg);
    this.exitCode = exitCode;
  }
}

/** A bound smtp listener master hands to the workers. */
export interface ListenHandle {
  readonly name: 'smtp';
  readonly display: string;
  readonly handle: object;
}

/** Binds every smtp listener ("host:port"); a port that is taken or an address not here is exit 69. */
export function bindListeners(listen: readonly string[]): ListenHandle[] {
  const handles: ListenHandle[] = [];
  for (const addr of listen) {
    const p = parseListen(addr)!;
    const family = net.isIPv6(p.host) ? 6 : 4;
    const h = serverHandle(p.host, p.port, family);
    if (typeof h === 'number') throw new StartError(`cannot bind smtp listener ${addr}: ${errnoName(h)}`, EXIT.unavailable);
    const out: { address?: string; port?: number } = {};
    // libuv reports a failed bind (EADDRINUSE) only later: an unbound socket has no name.
    const rc = (h as { getsockname(o: object): number }).getsockname(out);
    if (rc !== 0 || out.port === undefined) {
      (h as { close(): void }).close();
      throw new StartError(`cannot bind smtp listener ${addr}: ${errnoName(rc)}`, EXIT.unavailable);
    }
    handles.push({ name: 'smtp', display: family === 6 ? `[${out.address}]:${out.port}` : `${out.address}:${out.port}`, handle: h });
  }
  return handles;
}

// Refuses a spool or data directory anyone may write to: another local user could plant or steal mail.
export function assertSafeDirs(paths: readonly string[]): void {
  for (const p of paths) {
    let st;
    try {
      st = statSync(p);
    } catch {
      continue;
    }
    if ((st.mode & 0o002) !== 0) throw new StartError(`${p} is world-writable (mode ${(st.mode & 0o7777).toString(8)}): refusing to start; chmod o-w ${p}`, EXIT.config);
  }
}

// Node's own primitive for a listening handle that is bound but not yet listening (what its cluster module
// uses): master binds, the children listen and accept. A number is a failed bind's errno.
function serverHandle(address: string, port: number, family: number): object | number {
  return (net as unknown as { _createServerHandle(a: string, p: number, t: number): object | number })._createServerHandle(address, port, family);
}

// A private/ Unix socket (replacing a stale one) that only `user` may connect to (0600).
export function bindPrivate(path: string, ids: Identities | null): object {
  rmSync(path, { force: true });
  const h = serverHandle(path, -1, -1);
  if (typeof h === 'number') throw new StartError(`cannot bind ${path}: ${errnoName(h)}`, EXIT.software);
  chmodSync(path, 0o600);
  if (ids !== null) chownSync(path, ids.user.uid, ids.group);
  return h;
}

function errnoName(code: number): string {
  const names: Record<number, string> = { [-98]: 'EADDRINUSE (address already in use)', [-99]: 'EADDRNOTAVAIL', [-13]: 'EACCES (permission denied)' };
  return names[code] ?? `error ${code}`;
}

// One master per spool, whatever became of the pid file (an `rm -rf` of a running instance's data dir
// removes it): master binds an abstract Unix socket named after the spool's path, which the kernel frees when
// the process ends. Two queue managers on one spool would deliver each other's messages twice.
export function lockSpool(queueDir: string): object {
  const name = `\0palisade-spool-${createHash('sha256').update(resolve(queueDir)).digest('hex').slice(0, 32)}`;
  const h = serverHandle(name, -1, -1);
  if (typeof h === 'number') {
    if (errnoName(h).startsWith('EADDRINUSE')) throw new StartError(`Palisade is already running on the spool ${resolve(queueDir)}`, EXIT.unavailable);
    throw new StartError(`cannot lock the spool ${resolve(queueDir)}: ${errnoName(h)}`, EXIT.software);
  }
  return h;
}

export function assertNotRunning(pidFile: string): void {
  let pid = 0;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim());
  } catch {
    return;
  }
  if (pid > 0 && pid !== process.pid) {
    try {
      process.kill(pid, 0);
      throw new StartError(`Palisade is already running (pid ${pid}, ${pidFile})`, EXIT.unavailable);
    } catch (e) {
      if (e instanceof StartError) throw e;
    }
  }
}

// The control socket: one JSON request, one JSON answer per connection; 0600, owned by root (or the runner).
export async function serveControl(path: string, ids: Identities | null, handler: (cmd: { cmd?: string }) => Promise<unknown>): Promise<Server> {
  rmSync(path, { force: true });
  const server = createNetServer((sock) => {
    const dec = new FrameDecoder();
    sock.on('error', () => {});
    sock.on('data', (chunk) => {
      const frames = framesOrDrop(dec, chunk, sock);
      if (frames === null) return;
      for (const f of frames) {
        if (f.kind !== 'json') continue;
        let cmd: { cmd?: string };
        try {
          cmd = JSON.parse(f.payload.toString('utf8')) as { cmd?: string };
        } catch {
          sock.destroy();
          return;
        }
        void handler(cmd).then((a) => sock.end(encodeJson(a)), (e: Error) => sock.end(encodeJson({ ok: false, error: e.message })));
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  if (ids !== null) chownSync(path, 0, 0);
  return server;
}
