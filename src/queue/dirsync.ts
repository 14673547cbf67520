// SPDX-License-Identifier: MIT
// DirSync: group commit for directory fsyncs. Callers that arrive while one fsync runs share the next one,
// so no caller is answered before an fsync that started after its rename has finished.

import { promises as fsp } from 'node:fs';

/** Serialises fsyncs of one directory and lets concurrent callers share them. */
export class DirSync {
  private readonly path: string;
  private running: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(path: string) {
    this.path = path;
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

  private async run(): Promise<void> {
    try {
      const fh = await fsp.open(this.path, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    } finally {
      this.running = null;
    }
  }
}
