// SPDX-License-Identifier: MIT
// CompileCache: Node's compile cache (the TypeScript sources with their types stripped, and V8's code) for the
// children, so that they start without loading the TypeScript transpiler (about 11 MB in each process) and
// compile less: together about half of a child's memory. A primer process fills a pristine cache at start;
// each child process then gets its own copy, made fresh at every (re)start, which it alone may read and
// write. So a compromised child can change what it runs itself, never what another process runs, nor what it
// runs once restarted: a restart still starts from the code on disk.

import { fork } from 'node:child_process';
import { chownSync, cpSync, lstatSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Logger } from '../log/index.ts';
import { childEnv, childExecArgv } from './children.ts';

/** How long the primer may take before the children start without a cache. */
const PRIME_MS = 30_000;

/** The children's compile caches, under one directory of master's. */
export class CompileCache {
  private readonly root: string;
  private readonly log: Logger;
  // The pristine cache's subdirectory for master's uid ("v24.x-x64-<flags hash>-<uid>", named by Node), once primed.
  private primed: string | null = null;
  private made = 0;

  constructor(root: string, log: Logger) {
    this.root = resolve(root);
    this.log = log;
  }

  /**
   * Runs the primer (`entry child prime`, as master's user, under the permission model with `code` to read):
   * it loads every role's modules with the cache on, and exits. Resolves once it has; without it (an error, a
   * timeout) the children start without a cache.
   */
  async prime(entry: string, code: readonly string[]): Promise<void> {
    const pristine = join(this.root, 'pristine');
    const uid = process.getuid?.() ?? 0;
    try {
      // Whoever could replace the cache's directory could choose the code every child runs: its parent must
      // be master's own and writable by nobody else. The children's copies of an earlier run go.
      const parent = lstatSync(dirname(this.root));
      if (parent.uid !== uid || (parent.mode & 0o022) !== 0) throw new Error(`${dirname(this.root)} is not master's own, or others may write to it`);
      rmSync(this.root, { recursive: true, force: true });
      // Only master's user may list the cache's root; each child's own directory is made below it.
      mkdirSync(this.root, { mode: 0o711 });
      mkdirSync(pristine, { mode: 0o700 });
    } catch (e) {
      this.log.warn({ event: 'compile-cache-off', err: (e as Error).message });
      return;
    }
    const ok = await new Promise<boolean>((resolve) => {
      const child = fork(entry, ['child', 'prime'], {
        execPath: process.execPath,
        execArgv: childExecArgv({ read: [...code, pristine], write: [pristine] }),
        env: { ...childEnv(), NODE_COMPILE_CACHE: pristine },
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        serialization: 'json',
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), PRIME_MS);
      child.on('error', () => resolve(false));
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolve(code === 0);
      });
    });
    const made = ok ? readdirSync(pristine).find((n) => n.endsWith(`-${uid}`)) : undefined;
    if (made === undefined) {
      this.log.warn({ event: 'compile-cache-off', err: 'the primer made no cache' });
      return;
    }
    this.primed = join(pristine, made);
  }

  /**
   * A fresh copy of the pristine cache for one child process, owned by its user: its directory, or null (no
   * cache). The copy is named for the child's uid, as Node looks for it.
   */
  forChild(role: string, index: number, uid: number | undefined, gid: number | undefined): string | null {
    if (this.primed === null) return null;
    // A name of its own: a process a reload retired may still be writing to its copy.
    const dir = join(this.root, `${role}-${index}-${++this.made}`);
    try {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { mode: 0o700 });
      const childUid = uid ?? process.getuid?.() ?? 0;
      const sub = join(dir, this.primed.slice(this.primed.lastIndexOf('/') + 1).replace(/-\d+$/, `-${childUid}`));
      cpSync(this.primed, sub, { recursive: true });
      if (uid !== undefined) chownTree(dir, uid, gid ?? uid);
      return dir;
    } catch (e) {
      this.log.warn({ event: 'compile-cache-off', role, err: (e as Error).message });
      rmSync(dir, { recursive: true, force: true });
      return null;
    }
  }

  /** Removes a child's copy once its process has exited. */
  release(dir: string): void {
    rmSync(dir, { recursive: true, force: true });
  }
}

// chown -R, not following symbolic links (there are none in a cache Node made).
function chownTree(path: string, uid: number, gid: number): void {
  chownSync(path, uid, gid);
  if (!lstatSync(path).isDirectory()) return;
  for (const n of readdirSync(path)) chownTree(join(path, n), uid, gid);
}
