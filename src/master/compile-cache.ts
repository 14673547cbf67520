// SPDX-License-Identifier: MIT
// CompileCache: Node's compile cache (the TypeScript sources with their types stripped, and V8's code) for the
// children, so that they start without loading the TypeScript transpiler (about 11 MB in each process) and
// compile less: together about half of a child's memory. A primer process fills a pristine cache at start.
// A child that runs as another user than master (the privilege drop) reads a copy for its user that belongs
// to master and that it cannot change. A child of master's own user gets a private copy of its own, made
// fresh at every (re)start and removed when it exits. Either way no child can change what another process
// runs, nor what it runs itself once restarted: a restart still starts from the code on disk.

import { fork } from 'node:child_process';
import { chmodSync, cpSync, lstatSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import type { Logger } from '../log/index.ts';
import { childEnv, childExecArgv } from './children.ts';

/** How long the primer may take before the children start without a cache. */
const PRIME_MS = 30_000;

/** A child's cache: NODE_COMPILE_CACHE, the one path it is granted, and whether it is the child's own copy. */
export interface ChildCache {
  readonly dir: string;
  /** The path the permission model grants: the child's own copy, or its user's subdirectory of shared/. */
  readonly grant: string;
  /** Its own copy, removed when it exits. */
  readonly own: boolean;
}

/** The children's compile caches, under one directory of master's. */
export class CompileCache {
  private readonly root: string;
  private readonly log: Logger;
  private readonly uid = process.getuid?.() ?? 0;
  // The pristine cache's subdirectory for master's uid ("v24.x-x64-<V8 flags hash>-<uid>", named by Node).
  private primed: string | null = null;
  // Users with a read-only copy in shared/.
  private readonly shared = new Set<number>();
  private made = 0;

  constructor(root: string, log: Logger) {
    this.root = resolve(root);
    this.log = log;
  }

  /**
   * Runs the primer (`entry child prime`, as master's user, under the permission model with `code` to read):
   * it loads every role's modules with the cache on, and exits. Then makes the read-only copies for the
   * children's `users` other than master's. `writable`: every path a child may write (the spool, the
   * mailboxes); the cache must lie outside them all. Resolves once done; on any failure the children start
   * without a cache (logged).
   */
  async prime(entry: string, code: readonly string[], users: readonly number[], writable: readonly string[]): Promise<void> {
    const pristine = join(this.root, 'pristine');
    try {
      this.assertSafe(writable);
      rmSync(this.root, { recursive: true, force: true });
      // Others may pass through the root to their copy, not list it (explicit modes: the umask may differ).
      makeDir(this.root, 0o711);
      makeDir(pristine, 0o700);
    } catch (e) {
      this.log.warn({ event: 'compile-cache-off', err: (e as Error).message });
      return;
    }
    const outcome = await new Promise<string>((done) => {
      let timer: NodeJS.Timeout | undefined;
      try {
        const child = fork(entry, ['child', 'prime'], {
          execPath: process.execPath,
          execArgv: childExecArgv({ read: [...code, pristine], write: [pristine] }),
          env: { ...childEnv(), NODE_COMPILE_CACHE: pristine },
          stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
          serialization: 'json',
        });
        timer = setTimeout(() => child.kill('SIGKILL'), PRIME_MS);
        child.on('error', (e) => {
          clearTimeout(timer);
          done(`the primer failed: ${e.message}`);
        });
        child.on('exit', (status, signal) => {
          clearTimeout(timer);
          done(status === 0 ? '' : `the primer exited with ${signal ?? `status ${status}`}${signal === 'SIGKILL' ? ` (after ${PRIME_MS / 1000} s?)` : ''}`);
        });
      } catch (e) {
        clearTimeout(timer);
        done(`the primer did not start: ${(e as Error).message}`);
      }
    });
    let made: string | undefined;
    try {
      made = outcome === '' ? readdirSync(pristine).find((n) => n.endsWith(`-${this.uid}`)) : undefined;
    } catch {
      made = undefined;
    }
    if (made === undefined) {
      this.log.warn({ event: 'compile-cache-off', err: outcome || 'the primer made no cache' });
      return;
    }
    this.primed = join(pristine, made);
    // Master's, 0755 and 0644: the children read them; Node's write-back at exit fails (EACCES) and is
    // skipped, so nothing a child does reaches another process or its own next start.
    const shared = join(this.root, 'shared');
    try {
      makeDir(shared, 0o755);
    } catch (e) {
      this.log.warn({ event: 'compile-cache-off', err: `shared copies: ${(e as Error).message}` });
      return;
    }
    for (const u of new Set(users)) {
      if (u === this.uid) continue;
      const copy = join(shared, copyName(made, u));
      // Made under another name and renamed when its modes are right: no moment where it is writable.
      const tmp = `${copy}.tmp`;
      try {
        cpSync(this.primed, tmp, { recursive: true });
        readable(tmp);
        renameSync(tmp, copy);
        this.shared.add(u);
      } catch (e) {
        rmSync(tmp, { recursive: true, force: true });
        this.log.warn({ event: 'compile-cache-off', uid: u, err: `shared copy: ${(e as Error).message}` });
      }
    }
  }

  /**
   * Whoever could replace the cache's directory could choose the code every child runs: every directory above
   * it must be master's or root's and writable by nobody else (a sticky one, like /tmp, is fine: others may not
   * move what is not theirs), and no child may write anywhere above or in it.
   */
  private assertSafe(writable: readonly string[]): void {
    for (const w of writable) {
      const r = relative(resolve(w), this.root);
      if (!r.startsWith('..') && !isAbsolute(r)) throw new Error(`${this.root} is inside ${w}, which children may write`);
    }
    for (let d = dirname(this.root); ; d = dirname(d)) {
      const st = statSync(d);
      const sticky = (st.mode & 0o1000) !== 0;
      if ((st.uid !== this.uid && st.uid !== 0) || ((st.mode & 0o022) !== 0 && !sticky)) {
        throw new Error(`${d} is not master's or root's, or others may write to it`);
      }
      if (d === dirname(d)) break;
    }
  }

  /**
   * The cache for one child process of user `uid` (undefined = master's), or null (none). Another user's is
   * the shared read-only copy; master's own user's is a fresh private copy.
   */
  forChild(role: string, index: number, uid: number | undefined): ChildCache | null {
    if (this.primed === null) return null;
    if (uid !== undefined && uid !== this.uid) {
      if (!this.shared.has(uid)) return null;
      const shared = join(this.root, 'shared');
      return { dir: shared, grant: join(shared, copyName(basename(this.primed), uid)), own: false };
    }
    // A name of its own: a process a reload retired may still be writing to its copy.
    const dir = join(this.root, `${role}-${index}-${++this.made}`);
    try {
      makeDir(dir, 0o700);
      // Master's own user: the pristine subdirectory's own name.
      cpSync(this.primed, join(dir, basename(this.primed)), { recursive: true });
      return { dir, grant: dir, own: true };
    } catch (e) {
      this.log.warn({ event: 'compile-cache-off', role, err: (e as Error).message });
      this.release({ dir, grant: dir, own: true });
      return null;
    }
  }

  /** Removes a child's private copy once its process has exited. */
  release(c: ChildCache): void {
    if (!c.own) return;
    try {
      rmSync(c.dir, { recursive: true, force: true });
    } catch (e) {
      // What the child left there may not come out (it ran as master's user): the next start clears the root.
      this.log.warn({ event: 'compile-cache-leftover', dir: c.dir, err: (e as Error).message });
    }
  }
}

// Node names a cache's subdirectory after the user it serves.
function copyName(made: string, uid: number): string {
  return made.replace(/-\d+$/, `-${uid}`);
}

function makeDir(path: string, mode: number): void {
  mkdirSync(path, { mode });
  chmodSync(path, mode);
}

// Directories 0755, files 0644 (Node writes its cache files 0600).
function readable(path: string): void {
  const st = lstatSync(path);
  if (st.isDirectory()) {
    chmodSync(path, 0o755);
    for (const n of readdirSync(path)) readable(join(path, n));
  } else if (st.isFile()) chmodSync(path, 0o644);
}
