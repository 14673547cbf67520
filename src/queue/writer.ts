// SPDX-License-Identifier: MIT
// FileWriter: one message being written into the queue, into a reserved file (reserved.ts) or through tmp/,
// and made durable at commit (docs/queue-format.md). QueueStore.create hands them out.

import { createHash, type Hash } from 'node:crypto';
import { isAscii } from 'node:buffer';
import { chmodSync, constants, promises as fsp, renameSync, rmSync, writev as writevCb, writevSync, writeSync } from 'node:fs';
import { promisify } from 'node:util';
import { endRecord, HEADER_SIZE, lengthsLine, MAGIC, type QueueEnvelope } from './format.ts';
import { closeQuietly, COMMITTED_MODE, type Reserved } from './reserved.ts';
import type { QueueStore } from './store.ts';
import { invariant } from '../core/invariant.ts';

// Writes are gathered up to this many bytes before one writev.
const WRITE_BATCH = 256 * 1024;

/**
 * A message being written; nothing is visible in the queue until commit() has returned (or resolved). write
 * and commit return a promise only when they had to wait; done at once, they return nothing (no await is
 * owed: the caller can answer in the same turn of the event loop).
 */
export interface QueueWriter {
  readonly id: string;
  /** Appends message bytes (buffered; flushed in batches). */
  write(chunk: Buffer): Promise<void> | void;
  /** Makes the message durable in incoming/; returns (or resolves) only then. */
  commit(): Promise<void> | void;
  /** Removes the partial file. */
  abort(): Promise<void>;
  /** Bytes of message written so far. */
  readonly size: number;
}

// The writer uses synchronous writes and renames: on the page cache they take microseconds, and a hand-off to
// libuv's thread pool per call cost more CPU (two context switches each) than the call itself. open, fsync
// and close go through a FileHandle: Node's permission model refuses fsync on a bare descriptor.
export class FileWriter implements QueueWriter {
  readonly id: string;
  size = 0;
  private readonly store: QueueStore;
  private readonly envJson: Buffer;
  private readonly hash: Hash = createHash('sha256');
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  // The reserved file this message goes into (incoming/ID), or null: then tmp/ID, renamed at commit.
  private readonly reserved: Reserved | null;
  // Where the message is streamed once it outgrows memory: tmp/ID, or a second, ordinary (not O_DSYNC)
  // descriptor of the reserved file.
  private fh: fsp.FileHandle | null = null;
  // The file is in incoming/ and complete: from here on a failure must not remove it.
  private committed = false;
  private renamed = false;
  private done = false;
  private eightBit = false;

  constructor(store: QueueStore, id: string, envelope: QueueEnvelope, reserved: Reserved | null) {
    this.store = store;
    this.id = id;
    this.reserved = reserved;
    this.envJson = Buffer.from(JSON.stringify(envelope), 'utf8');
    this.pending.push(Buffer.from(MAGIC + lengthsLine(this.envJson.length, 0), 'latin1'), this.envJson, Buffer.from('\n'));
    this.pendingBytes = HEADER_SIZE + this.envJson.length + 1;
  }

  write(chunk: Buffer): Promise<void> | void {
    invariant(!this.done, 'write after commit/abort');
    this.hash.update(chunk);
    if (!this.eightBit && !isAscii(chunk)) this.eightBit = true;
    this.size += chunk.length;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    if (this.pendingBytes >= WRITE_BATCH) return this.flush();
  }

  private async open(): Promise<number> {
    if (this.fh === null) {
      const path = this.reserved !== null ? this.reserved.path : this.store.path('tmp', this.id);
      const fh = this.reserved !== null
        ? await fsp.open(path, constants.O_WRONLY)
        // O_EXCL: an ID is never reused, even across writer processes.
        : await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, COMMITTED_MODE);
      if (this.aborted) {
        // Aborted while the file was being opened: the abort could not remove what did not exist yet.
        await fh.close().catch(() => {});
        rmSync(path, { force: true });
        throw new Error('message aborted');
      }
      this.fh = fh;
    }
    return this.fh.fd;
  }

  private async flush(): Promise<void> {
    writeAllSync(await this.open(), this.takePending());
  }

  private takePending(): Buffer[] {
    const bufs = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    return bufs;
  }

  commit(): Promise<void> | void {
    invariant(!this.done, 'commit twice');
    this.done = true;
    const end = Buffer.from(endRecord(this.hash.digest('hex'), this.eightBit), 'latin1');
    this.pending.push(end);
    this.pendingBytes += end.length;
    const lengths = Buffer.from(lengthsLine(this.envJson.length, this.size), 'latin1');
    // The whole message still in memory (the common case): written once, lengths already right.
    if (this.fh === null) this.pending[0] = Buffer.concat([Buffer.from(MAGIC, 'latin1'), lengths]);
    const r = this.reserved;
    const pacer = this.store.pacer;
    const start = performance.now();
    if (this.fh === null && r !== null && pacer.sync(start)) {
      // When cleanup is idle: into the reserved file with one synchronous write (durable when it returns:
      // O_DSYNC), then the mark that makes it a message. No await on the way, so the caller answers in this
      // same turn of the event loop.
      try {
        writeAllSync(r.fd, this.takePending());
        pacer.syncDone(start, performance.now());
        chmodSync(r.path, COMMITTED_MODE);
      } catch (e) {
        // As cleanupAfterFailure, without an await (there is no second descriptor to close).
        this.closeReserved();
        this.removeUncommitted();
        throw e;
      }
      this.committed = true;
      this.afterCommit();
      return;
    }
    return this.commitAsync(lengths);
  }

  private async commitAsync(lengths: Buffer): Promise<void> {
    try {
      if (this.fh === null) {
        // In memory, and cleanup busy (commit() wrote synchronously otherwise): a reserved file's write goes to
        // the thread pool, so that other messages' writes overlap with it.
        const r = this.reserved;
        if (r !== null) {
          const bufs = this.takePending();
          await this.store.pacer.pooled(() => writeAll(r.fd, bufs), true);
        } else await this.flush();
      } else {
        await this.flush();
        // Patch the message length into the fixed-width lengths line; no reader takes the file yet.
        writeSync(this.fh.fd, lengths, 0, LENGTHS_SIZE_BYTES, MAGIC.length);
      }
      if (this.reserved !== null) {
        // Streamed through the ordinary descriptor: one fsync makes data, size and (a new file's) name durable.
        const fh = this.fh;
        if (fh !== null) await this.store.pacer.pooled(() => fh.sync());
        chmodSync(this.reserved.path, COMMITTED_MODE);
        this.committed = true;
      } else {
        const fh = this.fh!;
        // Rename first, then fsync the file and incoming/ in parallel: together they make data and name
        // durable, waiting for the same disk commit instead of two hand-offs in a row. Readers see the whole
        // file from the rename on (it is in the page cache); only a machine crash before the fsyncs could
        // leave an incomplete incoming/ file, and such a file was never acknowledged: it fails the end-record
        // check when read and is set aside in corrupt/.
        renameSync(this.store.path('tmp', this.id), this.store.path('incoming', this.id));
        this.renamed = true;
        await this.store.pacer.pooled(() => Promise.all([fh.sync(), this.store.syncDir('incoming')]));
        this.committed = true;
      }
      this.afterCommit();
    } catch (e) {
      await this.cleanupAfterFailure();
      throw e;
    }
  }

  // Closing after a durable commit cannot lose anything, and the next reserved files are not needed before the
  // next message: both wait until the caller has sent its answer.
  private afterCommit(): void {
    const fh = this.fh;
    this.fh = null;
    setImmediate(() => {
      this.closeReserved();
      this.store.reserved.refill();
      fh?.close().catch(() => {});
    });
  }

  private reservedClosed = false;

  private closeReserved(): void {
    if (this.reserved === null || this.reservedClosed) return;
    this.reservedClosed = true;
    closeQuietly(this.reserved.fd);
  }

  private aborted = false;

  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    this.aborted = true;
    await this.cleanupAfterFailure();
  }

  private async cleanupAfterFailure(): Promise<void> {
    this.closeReserved();
    await this.fh?.close().catch(() => {});
    this.fh = null;
    this.removeUncommitted();
  }

  private removeUncommitted(): void {
    if (this.committed) return;
    // Never acknowledged: the file goes. After a failed fsync of a renamed file the message must not stay
    // queued either (the client is told 4xx). A reserved file is still write-only, so no reader has it.
    const path = this.reserved !== null ? this.reserved.path : this.renamed ? this.store.path('incoming', this.id) : this.store.path('tmp', this.id);
    rmSync(path, { force: true });
    this.store.reserved.refill();
  }
}

// Writes all of `bufs` at the descriptor's position. A short write is not a bug: a filling disk writes what
// fits, and writing the rest then fails with the real error (ENOSPC), which the caller turns into 451 4.3.0.
function writeAllSync(fd: number, bufs: readonly Buffer[]): void {
  for (let off = 0; off < bufs.length; ) {
    // writev takes at most IOV_MAX (1024) buffers per call.
    let slice = bufs.slice(off, off + 1000);
    off += slice.length;
    let left = slice.reduce((n, b) => n + b.length, 0);
    for (;;) {
      const bytesWritten = writevSync(fd, slice);
      left -= bytesWritten;
      if (left === 0) break;
      invariant(bytesWritten > 0, 'writev made no progress');
      slice = skipBytes(slice, bytesWritten);
    }
  }
}

// The same on the thread pool.
async function writeAll(fd: number, bufs: readonly Buffer[]): Promise<void> {
  for (let off = 0; off < bufs.length; ) {
    let slice = bufs.slice(off, off + 1000);
    off += slice.length;
    let left = slice.reduce((n, b) => n + b.length, 0);
    for (;;) {
      const { bytesWritten } = await writevFd(fd, slice);
      left -= bytesWritten;
      if (left === 0) break;
      invariant(bytesWritten > 0, 'writev made no progress');
      slice = skipBytes(slice, bytesWritten);
    }
  }
}

const writevFd = promisify(writevCb) as unknown as (fd: number, bufs: readonly Buffer[]) => Promise<{ bytesWritten: number }>;

const LENGTHS_SIZE_BYTES = HEADER_SIZE - MAGIC.length;

// The buffers left after the first `n` bytes of `bufs` (after a short write).
function skipBytes(bufs: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of bufs) {
    if (n >= b.length) n -= b.length;
    else {
      out.push(n > 0 ? b.subarray(n) : b);
      n = 0;
    }
  }
  return out;
}

