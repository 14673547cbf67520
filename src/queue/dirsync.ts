// SPDX-License-Identifier: MIT
// DirSync: group commit for directory fsyncs. Callers that arrive while one fsync runs share the next one,
// so no caller is answered before an fsync that started after its rename has finished.

import { promises as fsp } from 'node:fs';

/** Serialises fsyncs of one directory and lets concurrent callers share them. */
export class DirSync {
  private readonly path: string;
  private readonly fsyncImpl: (fh: fsp.FileHandle) => Promise<void>;
  private running: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  /** `fsyncImpl` lets tests observe the fsyncs; production uses fsync(2) on the thread pool. */
  constructor(path: string, fsyncImpl: (fh: fsp.FileHandle) => Promise<void> = (fh) => fh.sync()) {
    this.path = path;
    this.fsyncImpl = fsyncImpl;
  }

  /** Resolves once an fsync of the directory that began after this call has completed. */
  sync(): Promise<void> {
    if (this.running === null) {
      this.running = this.run();
      return this.running;
    }
    if (this.next === null) {
      this.next = this.running.then(
        () => this.promote(),
        () => this.promote(),
      );
    }
    return this.next;
  }

  private promote(): Promise<void> {
    this.next = null;
    this.running = this.run();
    return this.running;
  }

  // The directory stays open between fsyncs (one open and close per fsync cost as much as the fsync's CPU).
  private fh: fsp.FileHandle | null = null;

  private async run(): Promise<void> {
    try {
      if (this.fh === null) this.fh = await fsp.open(this.path, 'r');
      const fh = this.fh;
      try {
        await this.fsyncImpl(fh);
      } catch (e) {
        // A directory that was replaced (or a stale descriptor): reopen next time.
        this.fh = null;
        await fh.close().catch(() => {});
        throw e;
      }
    } finally {
      this.running = null;
    }
  }
}
