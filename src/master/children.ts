// SPDX-License-Identifier: MIT
// Supervisor: starts one child process per role instance, restarts it with exponential backoff when it dies,
// and reports a crash loop instead of respawning in a tight loop.

import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, readdirSync, readFileSync } from 'node:fs';
import type { Logger } from '../log/index.ts';
import type { ChildCache, CompileCache } from './compile-cache.ts';

/** How to start one child. */
export interface ChildSpec {
  /** "smtpd" | "cleanup" ... */
  readonly role: string;
  /** Instance index within the role (smtpd workers). */
  readonly index: number;
  readonly entry: string;
  readonly uid?: number;
  readonly gid?: number;
  /** Node permission-model grants: paths this child may read and write (nothing else); a function is asked at each (re)start. */
  readonly grants?: Grants | (() => Grants);
  /** Called each time a new process for this spec is up (send it its init message). */
  readonly onSpawn: (child: ChildProcess) => void;
  /** Called when the process exits (before any restart). */
  readonly onExit?: (child: ChildProcess, code: number | null, signal: string | null) => void;
  /** Gives each process its compile cache (src/master/compile-cache.ts). */
  readonly cache?: CompileCache;
}

const MIN_BACKOFF = 100;
const MAX_BACKOFF = 30_000;
// A child that lived this long is healthy again: its backoff starts over.
const HEALTHY_AFTER = 30_000;
// This many deaths within CRASH_WINDOW is a crash loop (logged as an error).
const CRASH_LOOP = 5;
const CRASH_WINDOW = 60_000;

/** One supervised child slot. */
export class Supervised {
  readonly spec: ChildSpec;
  child: ChildProcess | null = null;
  private readonly log: Logger;
  private backoff = MIN_BACKOFF;
  private deaths: number[] = [];
  private startedAt = 0;
  private timer: NodeJS.Timeout | null = null;
  private stopping = false;
  // stop() calls so far: a restart whose stop was overtaken by another stop (shutdown) does not start again.
  private stops = 0;
  private exited: Promise<void> = Promise.resolve();

  constructor(spec: ChildSpec, log: Logger) {
    this.spec = spec;
    this.log = log;
  }

  /** Starts the process now. */
  start(): void {
    this.startedAt = Date.now();
    const base = typeof this.spec.grants === 'function' ? this.spec.grants() : this.spec.grants;
    const cache = this.spec.cache;
    const cached: ChildCache | null = base === undefined || cache === undefined ? null : cache.forChild(this.spec.role, this.spec.index, this.spec.uid);
    // Node uses the cache under the permission model only with write access to it (the file modes still
    // decide whether a write can happen).
    const grants = base !== undefined && cached !== null ? { ...base, read: [...base.read, cached.grant], write: [...base.write, cached.grant] } : base;
    const release = () => {
      if (cached !== null) cache?.release(cached);
    };
    let child: ChildProcess;
    try {
      child = fork(this.spec.entry, ['child', this.spec.role], {
        execPath: process.execPath,
        execArgv: childExecArgv(grants),
        env: { ...childEnv(), ...(cached !== null ? { NODE_COMPILE_CACHE: cached.dir } : {}) },
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        ...(this.spec.uid !== undefined ? { uid: this.spec.uid, gid: this.spec.gid } : {}),
        serialization: 'json',
      });
    } catch (e) {
      release();
      throw e;
    }
    this.child = child;
    let resolveExit!: () => void;
    this.exited = new Promise((r) => (resolveExit = r));
    child.on('error', (e) => this.log.error({ event: 'child-error', role: this.spec.role, err: e.message }));
    child.on('exit', (code, signal) => {
      resolveExit();
      release();
      this.spec.onExit?.(child, code, signal);
      if (this.child === child) this.child = null;
      if (this.stopping) return;
      this.log.warn({ event: 'child-exit', role: this.spec.role, index: this.spec.index, pid: child.pid, code, signal });
      this.scheduleRestart();
    });
    this.spec.onSpawn(child);
  }

  private scheduleRestart(): void {
    const now = Date.now();
    if (now - this.startedAt > HEALTHY_AFTER) this.backoff = MIN_BACKOFF;
    this.deaths = this.deaths.filter((t) => now - t < CRASH_WINDOW);
    this.deaths.push(now);
    if (this.deaths.length >= CRASH_LOOP) {
      this.log.error({ event: 'crash-loop', role: this.spec.role, deaths: this.deaths.length, window_s: CRASH_WINDOW / 1000, next_restart_ms: this.backoff });
    }
    const delay = this.backoff;
    this.backoff = Math.min(MAX_BACKOFF, this.backoff * 2);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.stopping) this.start();
    }, delay);
  }

  /** Replaces the process: stops it like stop(), then starts a new one (reload), unless stopped for good meanwhile. */
  async restart(msg: unknown, killAfterMs: number): Promise<void> {
    const stopped = this.stop(msg, killAfterMs);
    const mine = this.stops; // counted by stop() before its first await
    await stopped;
    if (this.stops !== mine) return;
    this.stopping = false;
    this.backoff = MIN_BACKOFF;
    this.start();
  }

  /** Stops supervising; sends `msg` (or SIGTERM) and resolves when the process is gone (SIGKILL after `killAfterMs`). */
  async stop(msg: unknown, killAfterMs: number): Promise<void> {
    this.stopping = true;
    this.stops++;
    if (this.timer !== null) clearTimeout(this.timer);
    const child = this.child;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    try {
      if (msg !== undefined && child.connected) child.send(msg as object);
      else child.kill('SIGTERM');
    } catch {
      child.kill('SIGTERM');
    }
    const killer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    await this.exited;
    clearTimeout(killer);
  }
}

/** A child's permission-model grants: paths it may read and write; `childProcess` only for the command agent. */
export interface Grants {
  readonly read: readonly string[];
  readonly write: readonly string[];
  readonly childProcess?: boolean;
}

// Children get no inherited Node flags from the master's command line, only the permission model with the
// role's exact grants (no child processes unless granted, no workers, addons, WASI or inspector: the model's
// defaults), and a young generation of at most 2 MB per semi-space: V8 grows it to 16 MB under a burst of
// mail and keeps it, which took smtpd from 56 to 190 MB and the delivery agent to 160 MB of RSS after a run
// of 100 KB messages; at 2 MB they stayed under 90 MB, with the same CPU per message (bench/RESULTS.md).
export function childExecArgv(grants?: Grants): string[] {
  const args = ['--disable-warning=ExperimentalWarning', '--disable-warning=SecurityWarning', '--max-semi-space-size=2'];
  if (grants === undefined) return args;
  args.push('--permission', '--no-experimental-sqlite');
  for (const r of grants.read) args.push(`--allow-fs-read=${r}`);
  for (const w of grants.write) args.push(`--allow-fs-write=${w}`);
  if (grants.childProcess === true) args.push('--allow-child-process');
  return args;
}

/** An explicit minimal environment: nothing of the operator's shell leaks into children. */
export function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' };
  if (process.env.UV_THREADPOOL_SIZE) env.UV_THREADPOOL_SIZE = process.env.UV_THREADPOOL_SIZE;
  if (process.env.TZ) env.TZ = process.env.TZ;
  return env;
}

// Descriptors inherited from whoever started master and not marked close-on-exec would reach every child and
// every command (a shell's, a terminal's): they are closed at start. Node's own are all close-on-exec.
export function closeInheritedFds(): void {
  const channel = Number(process.env.NODE_CHANNEL_FD ?? -1);
  let names: string[];
  try {
    names = readdirSync('/proc/self/fd');
  } catch {
    return; // no /proc: nothing to go by
  }
  for (const n of names) {
    const fd = Number(n);
    if (!Number.isInteger(fd) || fd <= 2 || fd === channel) continue;
    try {
      const flags = /^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      if (flags !== null && (parseInt(flags[1]!, 8) & 0o2000000) === 0) closeSync(fd);
    } catch {
      // Gone meanwhile (the directory's own descriptor).
    }
  }
}
