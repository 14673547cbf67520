// SPDX-License-Identifier: MIT
// ReservedFiles: queue files made ahead of need, under their final name in incoming/: created write-only and
// O_DSYNC. A new message takes one (its queue ID is the file's name); at the end of DATA the message is
// written into it with one write that returns once the disk has the data, and the file is made readable:
// committed. No file is created, renamed or directory-fsynced between the end of DATA and the 250, and no
// thread-pool hand-off is needed when cleanup is otherwise idle (WritePacer). The writer is in writer.ts.
//
// The name needs no directory fsync of its own: the first synchronized write to a newly created file makes
// its directory entry durable with it on Linux's journaling file systems (ext4 commits the transaction that
// created it, and without a journal syncs the parent of a new entry; XFS and btrfs log the entry with the
// inode), as Postfix relies on too. A reserved file the machine lost before its message came held nothing.

import { closeSync, constants, open as openCb, rmSync } from 'node:fs';
import { promisify } from 'node:util';

// This many kept ready while mail flows.
export const RESERVED = 8;
// A reserved file older than this is not used (its queue ID, made when the file was, would be too far from
// the message's arrival for IDs to sort by time): it is removed and a fresh one made.
const MAX_AGE_MS = 10_000;
// How many after a quiet spell, when the ready ones had grown too old to use (then each message would
// otherwise replace all of them).
const QUIET_RESERVED = 2;

/**
 * The mode bits of queue files. A reserved file in incoming/ is write-only until its message is durable in it;
 * then its owner may read and write it: readers of incoming/ take only such files (`isCommittedMode`). Files
 * that reach incoming/ by rename from tmp/ are complete already and are created that way.
 */
export const RESERVED_MODE = 0o200;
export const COMMITTED_MODE = 0o600;

/** A file in incoming/ is a message when its owner may both read and write it. */
export function isCommittedMode(mode: number): boolean {
  return (mode & 0o600) === 0o600;
}

/** A reserved queue file: made in incoming/ under its ID, write-only until committed. */
export interface Reserved {
  readonly fd: number;
  readonly id: string;
  readonly path: string;
  readonly made: number;
}

/** What the pool needs from the store. */
export interface ReservedDeps {
  /** incoming/ID */
  path(id: string): string;
  nextId(): string;
  /** Age past which a ready file is not used (tests shorten it). */
  readonly maxAgeMs?: number;
}

/** The pool of reserved files of one writer process. Off until `use()`. */
export class ReservedFiles {
  private readonly deps: ReservedDeps;
  private readonly maxAgeMs: number;
  // Ready, in ID order.
  private ready: Reserved[] = [];
  private target = RESERVED;
  private readonly making = new Set<Promise<void>>();
  private on = false;

  constructor(deps: ReservedDeps) {
    this.deps = deps;
    this.maxAgeMs = deps.maxAgeMs ?? MAX_AGE_MS;
  }

  /** Turns reserved files on and makes the first ones. */
  use(): void {
    this.on = true;
    this.refill();
  }

  /**
   * The oldest ready reserved file, or null (off, none ready, or the ready ones have grown too old: those are
   * removed and fresh ones made; this message's file is created the classic way meanwhile).
   */
  take(): Reserved | null {
    if (!this.on) return null;
    const r = this.ready[0];
    if (r === undefined) {
      this.refill();
      return null;
    }
    if (Date.now() - r.made > this.maxAgeMs) {
      this.drop();
      this.target = QUIET_RESERVED;
      this.refill();
      return null;
    }
    this.target = RESERVED;
    return this.ready.shift()!;
  }

  /**
   * Makes reserved files in the background up to the target. One at a time as they are used: making them in
   * batches was slower at one session, the burst of creations competing with the next message for the CPU.
   */
  refill(): void {
    if (!this.on) return;
    while (this.ready.length + this.making.size < this.target) {
      const id = this.deps.nextId();
      const made = this.make(id, this.deps.path(id)).finally(() => this.making.delete(made));
      this.making.add(made);
    }
  }

  private async make(id: string, path: string): Promise<void> {
    let fd: number;
    try {
      // O_EXCL: an ID is never reused, even across writer processes. Created on the thread pool (an inode
      // allocation can take a while); a bare descriptor, closed synchronously later: nothing is fsynced
      // through it (O_DSYNC writes), so it needs no FileHandle, and closing it needs no hand-off.
      fd = await openFd(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DSYNC, RESERVED_MODE);
    } catch {
      // None made (full disk, no descriptors): commits create their files themselves meanwhile.
      return;
    }
    if (!this.on) {
      closeQuietly(fd);
      rmSync(path, { force: true });
      return;
    }
    // In ID order (they are made concurrently and become ready in any order): taken oldest first.
    const r: Reserved = { fd, id, path, made: Date.now() };
    let i = this.ready.length;
    while (i > 0 && this.ready[i - 1]!.id > id) i--;
    this.ready.splice(i, 0, r);
  }

  /** Reserved files ready for use now. */
  get readyCount(): number {
    return this.ready.length;
  }

  // Removes the ready ones.
  private drop(): void {
    const all = this.ready;
    this.ready = [];
    for (const r of all) {
      closeQuietly(r.fd);
      rmSync(r.path, { force: true });
    }
  }

  /** Stops making reserved files and removes them, the ones still being made once they are. */
  async stop(): Promise<void> {
    this.on = false;
    this.drop();
    await Promise.all([...this.making]);
  }
}

const openFd = promisify(openCb) as (path: string, flags: number, mode: number) => Promise<number>;

/** Closes a bare descriptor; one already closed is fine. */
export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}
