// SPDX-License-Identifier: MIT
// startPalisade: runs the real `palisade start` on free loopback ports in a fresh directory, waits for the
// ready line, and stops it (and every process it started) afterwards.

import { spawn, type ChildProcess } from 'node:child_process';
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
}

/**
 * Starts Palisade with `toml` appended to a base config (user = "", port 0, data_dir in a temp dir).
 * Sections in `toml` must not repeat [server] or [smtp] keys of the base: pass them through `server` / `smtp`.
 */
export async function startPalisade(opts: { toml?: string; smtp?: string; server?: string; dir?: string } = {}): Promise<Running> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'palisade-test-'));
  const config = join(dir, 'palisade.toml');
  writeFileSync(config, `[server]\nuser = ""\nhostname = "mx.test"\ndata_dir = "${dir}/var"\ndrain_timeout = "2s"\n${opts.server ?? ''}\n` +
    `[smtp]\nlisten = ["127.0.0.1:0"]\nworkers = 2\n${opts.smtp ?? ''}\n[log]\nlevel = "info"\n${opts.toml ?? ''}\n`);
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

  const ready = await waitLog((l) => l.event === 'ready');
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
    waitLog,
    cli: (args, input) => runCli(args, config, dir, input),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => {
          try {
            process.kill(-proc.pid!, 'SIGKILL');
          } catch { /* gone */ }
        }, 15_000);
        const code = await exited;
        clearTimeout(timer);
        if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
        return code;
      }
      return proc.exitCode;
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
