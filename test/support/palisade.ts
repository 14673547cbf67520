// SPDX-License-Identifier: MIT
// startPalisade: runs the real `palisade start` on free loopback ports in a fresh directory, waits for the
// ready line, and stops it (and every process it started) afterwards.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
export const MAIN = join(ROOT, 'src/main.ts');

/** A running Palisade under test. */
export interface Running {
  readonly dir: string;
  readonly config: string;
  readonly proc: ChildProcess;
  /** Resolved listeners from the ready line, e.g. { smtp: ["127.0.0.1:40123"] }. */
  readonly listeners: Record<string, string[]>;
  /** Port of the first smtp listener. */
  readonly port: number;
  readonly spool: string;
  /** Every stdout line so far, parsed. */
  logs(): Record<string, unknown>[];
  /** Waits for a log line matching `pred`. */
  waitLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Runs a palisade CLI command against this instance. */
  cli(args: string[], input?: string | Buffer): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** SIGTERM and wait; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** Resolves with master's exit code once it has exited (by whatever means). */
  exited(): Promise<number | null>;
}

/** Options of startPalisade; `listen` replaces the default smtp listener ["127.0.0.1:0"]. */
export interface StartOptions {
  toml?: string;
  smtp?: string;
  server?: string;
  dir?: string;
  listen?: readonly string[];
  /** smtpd processes (default 2, so per-process state shows up as a bug). */
  workers?: number;
  /**
   * Leave out the base config's `user = ""`, so `user` / `smtpd_user` from `server` (or their defaults) apply:
   * run as root, the children drop to the service users. The directory must then be traversable by them.
   */
  dropPrivileges?: boolean;
}

/** The config text startPalisade writes for `dir` (also used by tests that start Palisade by hand). */
export function configText(dir: string, opts: StartOptions = {}): string {
  const listen = (opts.listen ?? ['127.0.0.1:0']).map((l) => JSON.stringify(l)).join(', ');
  return `[server]\n${opts.dropPrivileges === true ? '' : 'user = ""\n'}hostname = "mx.test"\ndata_dir = "${dir}/var"\ndrain_timeout = "2s"\n${opts.server ?? ''}\n` +
    `[smtp]\nlisten = [${listen}]\nworkers = ${opts.workers ?? 2}\n${opts.smtp ?? ''}\n[log]\nlevel = "info"\n${opts.toml ?? ''}\n`;
}

/**
 * Starts Palisade with `toml` appended to a base config (user = "", port 0, data_dir in a temp dir).
 * Sections in `toml` must not repeat [server] or [smtp] keys of the base: pass them through `server` / `smtp`.
 * With `dir`, the directory is the caller's and is kept after stop().
 */
export async function startPalisade(opts: StartOptions = {}): Promise<Running> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'palisade-test-'));
  const config = join(dir, 'palisade.toml');
  writeFileSync(config, configText(dir, opts));
  const proc = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', MAIN, 'start', '--config', config], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const lines: Record<string, unknown>[] = [];
  const waiters: { pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }[] = [];
  let stderr = '';
  let buf = '';
  proc.stdout!.on('data', (c: Buffer) => {
    buf += c.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let obj: Record<string, unknown>;
      try {
        obj = JSON.parse(line) as Record<string, unknown>;
      } catch {
        obj = { raw: line };
      }
      lines.push(obj);
      for (const w of [...waiters]) {
        if (w.pred(obj)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(obj);
        }
      }
    }
  });
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));

  function waitLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const found = lines.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timeout waiting for log line; stderr: ${stderr.slice(-500)}`)), timeoutMs);
      waiters.push({ pred, resolve: (l) => { clearTimeout(t); resolve(l); } });
      void exited.then((code) => { clearTimeout(t); reject(new Error(`palisade exited (${code}) before the expected log line; stderr: ${stderr.slice(-800)}`)); });
    });
  }

  let ready: Record<string, unknown>;
  try {
    ready = await waitLog((l) => l.event === 'ready');
  } catch (e) {
    // Never leave a half-started Palisade behind.
    try {
      process.kill(-proc.pid!, 'SIGKILL');
    } catch { /* gone */ }
    await exited;
    if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const listeners = ready.listeners as Record<string, string[]>;
  const port = Number(listeners.smtp![0]!.split(':').pop());
  return {
    dir,
    config,
    proc,
    listeners,
    port,
    spool: join(dir, 'var/spool'),
    logs: () => lines,
    exited: () => exited,
    waitLog,
    cli: (args, input) => runCli(args, config, dir, input),
    async stop() {
      let code: number | null;
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => {
          try {
            process.kill(-proc.pid!, 'SIGKILL');
          } catch { /* gone */ }
        }, 15_000);
        code = await exited;
        clearTimeout(timer);
      } else {
        code = proc.exitCode;
      }
      if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}

/** Runs `palisade ARGS --config CONFIG` and collects its output. */
export function runCli(args: string[], config: string | null, cwd: string, input?: string | Buffer): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const argv = ['--disable-warning=ExperimentalWarning', MAIN, ...args, ...(config ? ['--config', config] : [])];
    const p = spawn(process.execPath, argv, { cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
    p.stdin.on('error', () => {});
    p.stdin.end(input ?? '');
  });
}

/** Direct children of `pid` as [pid, command line] pairs (from ps). */
export function childProcesses(pid: number): { pid: number; args: string }[] {
  let out: string;
  try {
    out = execFileSync('ps', ['--ppid', String(pid), '-o', 'pid=,args='], { encoding: 'utf8' });
  } catch {
    return []; // ps exits 1 when there is no child
  }
  return out.split('\n').filter((l) => l.trim() !== '').map((l) => {
    const m = /^\s*(\d+)\s+(.*)$/.exec(l)!;
    return { pid: Number(m[1]), args: m[2]! };
  });
}

/** Polls `cond` every 50 ms until it returns a non-undefined value or `timeoutMs` passes. */
export async function waitFor<T>(what: string, cond: () => T | undefined | Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Runs `palisade start --config CONFIG` expecting it to exit by itself (a refused start); kills it (and
 * anything it started) as soon as it prints the ready line or after `timeoutMs`, then resolves with what it
 * printed (`killed` tells that it had to be killed).
 */
export function runStart(config: string, cwd: string, timeoutMs = 15_000): Promise<{ code: number | null; stdout: string; stderr: string; killed: boolean }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', MAIN, 'start', '--config', config], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let stdout = '';
    let stderr = '';
    let killed = false;
    const kill = () => {
      if (killed) return;
      killed = true;
      try {
        process.kill(-p.pid!, 'SIGKILL');
      } catch { /* gone */ }
    };
    p.stdout.on('data', (c: Buffer) => {
      stdout += c.toString('utf8');
      if (stdout.includes('"event":"ready"')) kill();
    });
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(kill, timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, killed });
    });
  });
}
