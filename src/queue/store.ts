// SPDX-License-Identifier: MIT
// QueueStore: the spool directories, durable commit (fsync file, rename, fsync directory), state moves, reads.

import { createHash, type Hash } from 'node:crypto';
import { isAscii } from 'node:buffer';
import { constants, promises as fsp, openSync, fsyncSync, fstatSync, ftruncateSync, closeSync, createReadStream, readSync, writevSync, writeSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { DirSync } from './dirsync.ts';
import { createIdGenerator, QUEUE_ID } from './id.ts';
import {
  CorruptQueueFile, endRecord, HEADER_SIZE, lengthsLine, MAGIC, parseHead, parseTail, stateLine,
  type ParsedQueueFile, type QueueEnvelope, type RecipientState, type StateRecord,
} from './format.ts';
import type { Envelope } from '../core/envelope.ts';
import { invariant } from '../core/invariant.ts';

/** Message states = directories under the queue root (besides tmp/ and private/). */
export type MessageState = 'incoming' | 'active' | 'deferred' | 'hold' | 'corrupt';
export const MESSAGE_STATES: readonly MessageState[] = ['incoming', 'active', 'deferred', 'hold', 'corrupt'];
const ALL_DIRS = ['tmp', 'spare', ...MESSAGE_STATES, 'private'] as const;
// Empty files cleanup opens ahead of need (spare/), so committing a message does not wait for a file to be
// created: at most this many.
export const SPARES = 4;

// Writes are gathered up to this many bytes before one writev.
const WRITE_BATCH = 256 * 1024;

/** A message being written; nothing is visible in the queue until commit() resolves. */
export interface QueueWriter {
  readonly id: string;
  /** Appends message bytes (buffered; flushed in batches). */
  write(chunk: Buffer): Promise<void>;
  /** Makes the message durable in incoming/ and resolves only then. */
  commit(): Promise<void>;
  /** Removes the partial file. */
  abort(): Promise<void>;
  /** Bytes of message written so far. */
  readonly size: number;
}

/** Summary of a queued message for listings. */
export interface QueueEntry {
  readonly id: string;
  readonly state: MessageState;
  readonly envelope: QueueEnvelope;
  readonly recipients: readonly { address: string; state: RecipientState; last_reply: string | null; next_retry: string | null; dsn: string | null }[];
}

/** The on-disk queue rooted at `dir`. */
export class QueueStore {
  readonly dir: string;
  private readonly nextId = createIdGenerator();
  private readonly dirSyncs = new Map<string, DirSync>();

  constructor(dir: string) {
    this.dir = dir;
  }

  /** Path of a state directory. */
  path(state: MessageState | 'tmp' | 'spare' | 'private', id?: string): string {
    return id === undefined ? join(this.dir, state) : join(this.dir, state, id);
  }

  /** Creates the directory tree (mode 0700 for state directories unless told otherwise). */
  async init(mode = 0o700): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o710 });
    for (const d of ALL_DIRS) await fsp.mkdir(join(this.dir, d), { recursive: true, mode });
  }

  /** Crash recovery at start: removes tmp/* (never acknowledged); returns the IDs removed. Empties spare/. */
  async recover(): Promise<string[]> {
    for (const name of await fsp.readdir(this.path('spare')).catch(() => [] as string[])) await fsp.rm(join(this.path('spare'), name), { force: true });
    const removed: string[] = [];
    for (const name of await fsp.readdir(this.path('tmp'))) {
      await fsp.rm(join(this.path('tmp'), name), { force: true });
      removed.push(name);
    }
    if (removed.length > 0) await this.syncDir('tmp');
    return removed;
  }

  /** Starts a new message with `envelope`; the returned writer owns tmp/ID until commit or abort. */
  async create(envelope: Envelope, arrival = new Date()): Promise<QueueWriter> {
    const id = this.nextId();
    const full: QueueEnvelope = { id, arrival: arrival.toISOString(), ...envelope };
    return new FileWriter(this, id, full);
  }

  // ---- spare files ------------------------------------------------------------------------------------
  // A message small enough to be written at once is written at commit into a spare file — an empty file in
  // spare/, created and opened beforehand — which is then renamed into incoming/ under the message's ID. So the
  // file's creation (a hand-off to the thread pool and the file system's inode allocation) is off the path
  // between the end of DATA and the 250. spare/ holds no mail: it is emptied at start.
  private spares: { fh: fsp.FileHandle; path: string }[] = [];
  private sparesOpening = 0;
  private spareSeq = 0;

  /**
   * A spare file, or null when none is ready (the caller creates its file itself). The caller refills
   * (`refillSpares`) once its commit is durable: a file being created meanwhile (inode allocation) slowed the
   * rename out of spare/ from ~30 µs to 150–200 µs at one session, and the fsyncs after it.
   */
  takeSpare(): { fh: fsp.FileHandle; path: string } | null {
    return this.spares.pop() ?? null;
  }

  /** Spare files are used (cleanup, the one writer of the queue, turns this on). */
  usesSpares = false;

  /** Turns spare files on and opens the first ones. */
  useSpares(): void {
    this.usesSpares = true;
    this.refillSpares();
  }

  /** Opens spare files in the background up to SPARES. */
  refillSpares(): void {
    while (this.spares.length + this.sparesOpening < SPARES) {
      const path = join(this.path('spare'), `${process.pid}.${++this.spareSeq}`);
      this.sparesOpening++;
      fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600).then(
        (fh) => {
          this.sparesOpening--;
          this.spares.push({ fh, path });
        },
        () => {
          // No spare (full disk, no descriptors): commits create their files themselves meanwhile.
          this.sparesOpening--;
        },
      );
    }
  }

  /** Fsyncs a state directory, sharing one fsync among concurrent callers (group commit). */
  syncDir(state: MessageState | 'tmp'): Promise<void> {
    let ds = this.dirSyncs.get(state);
    if (ds === undefined) {
      ds = new DirSync(this.path(state));
      this.dirSyncs.set(state, ds);
    }
    return ds.sync();
  }

  /** Moves a message between states atomically and durably. */
  async move(id: string, from: MessageState, to: MessageState): Promise<void> {
    invariant(QUEUE_ID.test(id), 'bad queue id');
    await fsp.rename(this.path(from, id), this.path(to, id));
    await Promise.all([this.syncDir(to), this.syncDir(from)]);
  }

  /** Appends a state record with fdatasync (the file is otherwise never rewritten after commit). */
  appendState(state: MessageState, id: string, rec: StateRecord): Promise<void> {
    return this.appendStates(state, id, [rec]);
  }

  /** Appends state records with one write and one fdatasync; on a short write nothing is kept (and it throws). */
  async appendStates(state: MessageState, id: string, recs: readonly StateRecord[]): Promise<void> {
    if (recs.length === 0) return;
    const buf = Buffer.from(recs.map(stateLine).join(''), 'utf8');
    // No O_CREAT: a record for a file that is gone (removed, or moved by someone else) must fail, not leave a
    // record-only file behind.
    const fh = await fsp.open(this.path(state, id), constants.O_WRONLY | constants.O_APPEND);
    try {
      const { size } = await fh.stat();
      const { bytesWritten } = await fh.write(buf);
      if (bytesWritten !== buf.length) {
        // A full disk writes what fits. A torn record left in place would have the next append run on from it
        // (one unparsable line: the whole file reads as corrupt), so take it back and fail like ENOSPC.
        await fh.truncate(size);
        throw Object.assign(new Error(`short write appending a state record (${bytesWritten} of ${buf.length} bytes)`), { code: 'ENOSPC' });
      }
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  /** Finds which state directory holds `id`, or null. */
  async locate(id: string): Promise<MessageState | null> {
    if (!QUEUE_ID.test(id)) return null;
    for (const s of MESSAGE_STATES) {
      try {
        await fsp.access(this.path(s, id));
        return s;
      } catch {
        /* not here */
      }
    }
    return null;
  }

  /** Reads and verifies a queue file's envelope, end record and state records (not the message). */
  read(state: MessageState, id: string): Promise<ParsedQueueFile> {
    return readQueueFile(this.path(state, id));
  }

  /** Reads the message bytes of a queued file (for show --body, delivery, tests). */
  async readMessage(state: MessageState, id: string): Promise<Buffer> {
    const q = await this.read(state, id);
    const fh = await fsp.open(this.path(state, id), 'r');
    try {
      const buf = Buffer.alloc(q.messageLength);
      await fh.read(buf, 0, buf.length, q.messageOffset);
      return buf;
    } finally {
      await fh.close();
    }
  }

  /** Lists messages in the given states, oldest first, with per-recipient state. Unreadable files are skipped. */
  async list(states: readonly MessageState[] = ['incoming', 'active', 'deferred', 'hold']): Promise<QueueEntry[]> {
    const seen = new Map<string, QueueEntry>();
    // Two passes: a message qmgr moves into a directory already scanned (deferred → active on a retry) is not
    // in the one scanned after it either; the second pass finds it where it went.
    for (let pass = 0; pass < 2; pass++) {
      for (const s of states) {
        let names: string[];
        try {
          names = await fsp.readdir(this.path(s));
        } catch {
          continue;
        }
        for (const id of names) {
          if (!QUEUE_ID.test(id) || seen.has(id)) continue;
          try {
            seen.set(id, toEntry(id, s, await this.read(s, id)));
          } catch {
            /* moved or removed meanwhile, or corrupt: not listed */
          }
        }
      }
    }
    return [...seen.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** One message, wherever it is; null when unknown. */
  async show(id: string): Promise<QueueEntry | null> {
    const s = await this.locate(id);
    if (s === null) return null;
    try {
      return toEntry(id, s, await this.read(s, id));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return this.show(id);
      throw e;
    }
  }
}

/** Reads a queue file's envelope, end record and state records by path (delivery agents use this). */
// Reads are synchronous: a queue file's header and tail are a few KB in the page cache (the message was
// just written), and a hand-off to the thread pool per call (open, stat, reads, close) cost more CPU and
// latency than the calls. The body is never read here.
export async function readQueueFile(path: string): Promise<ParsedQueueFile> {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const first = Buffer.alloc(Math.min(size, 64 * 1024));
    readFully(fd, first, 0);
    let head: Buffer = first;
    const lens = parseLengths(first);
    if (lens !== null && HEADER_SIZE + lens.envLen + 1 > first.length) {
      head = Buffer.alloc(Math.min(size, HEADER_SIZE + lens.envLen + 1));
      readFully(fd, head, 0);
    }
    const h = parseHead(head);
    const tailStart = h.messageOffset + h.msgLen;
    if (tailStart > size) throw new CorruptQueueFile('truncated message');
    const tail = Buffer.alloc(size - tailStart);
    readFully(fd, tail, tailStart);
    const t = parseTail(tail);
    return { envelope: h.envelope, messageOffset: h.messageOffset, messageLength: h.msgLen, sha256: t.sha256, eightBit: t.eightBit, records: t.records };
  } finally {
    closeSync(fd);
  }
}

/** Reads `buf.length` bytes at `position` (fewer only at end of file). */
export function readFully(fd: number, buf: Buffer, position: number): number {
  let got = 0;
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/** The header section of a queued message (through the empty line), at most `max` bytes. */
export async function readHeaderSection(path: string, offset: number, length: number, max = 1 << 20): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const c of createReadStream(path, { start: offset, end: offset + Math.max(1, Math.min(length, max)) - 1 })) {
    chunks.push(c as Buffer);
    total += (c as Buffer).length;
    const all = Buffer.concat(chunks, total);
    const end = all.indexOf('\r\n\r\n');
    if (end >= 0) return all.subarray(0, end + 2);
  }
  return Buffer.concat(chunks, total);
}

function parseLengths(b: Buffer): { envLen: number } | null {
  const m = /^L (\d{10}) /.exec(b.subarray(MAGIC.length, HEADER_SIZE).toString('latin1'));
  return m === null ? null : { envLen: Number(m[1]) };
}

function toEntry(id: string, state: MessageState, q: ParsedQueueFile): QueueEntry {
  const last = new Map<number, StateRecord>();
  for (const r of q.records) last.set(r.rcpt, r);
  return {
    id,
    state,
    envelope: q.envelope,
    recipients: q.envelope.recipients.map((r, i) => {
      const rec = last.get(i);
      return {
        address: r.address,
        state: rec?.state ?? 'pending',
        last_reply: rec?.reply ?? null,
        next_retry: rec?.next ?? null,
        dsn: rec?.dsn ?? null,
      };
    }),
  };
}

// The writer uses synchronous writes and rename: on the page cache they take microseconds, and a hand-off to
// libuv's thread pool per call cost more CPU (two context switches each) than the call itself. open, fsync
// and close go through a FileHandle: Node's permission model refuses fsync on a bare descriptor.
class FileWriter implements QueueWriter {
  readonly id: string;
  size = 0;
  private readonly store: QueueStore;
  private readonly envJson: Buffer;
  private readonly hash: Hash = createHash('sha256');
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private fh: fsp.FileHandle | null = null;
  private renamed = false;
  // The spare file written instead of tmp/ID, if any.
  private from: string | null = null;
  private written = 0;
  private done = false;
  private eightBit = false;

  constructor(store: QueueStore, id: string, envelope: QueueEnvelope) {
    this.store = store;
    this.id = id;
    this.envJson = Buffer.from(JSON.stringify(envelope), 'utf8');
    this.pending.push(Buffer.from(MAGIC + lengthsLine(this.envJson.length, 0), 'latin1'), this.envJson, Buffer.from('\n'));
    this.pendingBytes = HEADER_SIZE + this.envJson.length + 1;
  }

  async write(chunk: Buffer): Promise<void> {
    invariant(!this.done, 'write after commit/abort');
    this.hash.update(chunk);
    if (!this.eightBit && !isAscii(chunk)) this.eightBit = true;
    this.size += chunk.length;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    if (this.pendingBytes >= WRITE_BATCH) await this.flush();
  }

  private async open(): Promise<number> {
    // O_EXCL: an ID is never reused, even across writer processes.
    if (this.fh === null) this.fh = await fsp.open(this.store.path('tmp', this.id), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    return this.fh.fd;
  }

  private async flush(): Promise<void> {
    this.flushTo(await this.open());
  }

  private flushTo(fd: number): void {
    const bufs = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    let off = 0;
    while (off < bufs.length) {
      // writev takes at most IOV_MAX (1024) buffers per call.
      let slice = bufs.slice(off, off + 1000);
      off += slice.length;
      let left = slice.reduce((n, b) => n + b.length, 0);
      for (;;) {
        const bytesWritten = writevSync(fd, slice);
        this.written += bytesWritten;
        left -= bytesWritten;
        if (left === 0) break;
        // A short write is not a bug: a filling disk writes what fits, and writing the rest then fails
        // with the real error (ENOSPC), which the caller turns into 451 4.3.0.
        invariant(bytesWritten > 0, 'writev made no progress');
        slice = skipBytes(slice, bytesWritten);
      }
    }
  }

  async commit(): Promise<void> {
    invariant(!this.done, 'commit twice');
    this.done = true;
    const end = Buffer.from(endRecord(this.hash.digest('hex'), this.eightBit), 'latin1');
    this.pending.push(end);
    this.pendingBytes += end.length;
    const lengths = Buffer.from(lengthsLine(this.envJson.length, this.size), 'latin1');
    try {
      if (this.fh === null) {
        // The whole message is still in memory (the common case): write it once, lengths already right, into a
        // spare file when one is ready (else a new file in tmp/).
        this.pending[0] = Buffer.concat([Buffer.from(MAGIC, 'latin1'), lengths]);
        const spare = this.store.usesSpares ? this.store.takeSpare() : null;
        if (spare !== null) {
          this.fh = spare.fh;
          this.from = spare.path;
          this.flushTo(spare.fh.fd);
        } else await this.flush();
      } else {
        await this.flush();
        // Patch the message length into the fixed-width lengths line; the file is still private in tmp/.
        writeSync(this.fh.fd, lengths, 0, LENGTHS_SIZE_BYTES, MAGIC.length);
      }
      const fh = this.fh!;
      // Rename first, then fsync: the file's fsync commits its data and both directory entries in one
      // journal transaction, so the directory fsync after it has nothing left to wait for (one disk commit
      // per message instead of two). Readers see the whole file from the rename on (it is in the page cache);
      // only a machine crash before the fsync could leave an incomplete incoming/ file, and such a file was
      // never acknowledged: it fails the end-record check when read and is set aside in corrupt/.
      renameSync(this.from ?? this.store.path('tmp', this.id), this.store.path('incoming', this.id));
      this.renamed = true;
      // Both fsyncs start after the rename, so together they make data and name durable; in parallel they
      // wait for the same journal commit instead of two hand-offs in a row.
      await Promise.all([fh.sync(), this.store.syncDir('incoming')]);
      this.fh = null;
      // Closing after a successful fsync cannot lose anything, and a new spare is not needed before the next
      // message: both hand-offs to the thread pool (a wake-up each) wait until the caller has sent its answer.
      const refill = this.from !== null;
      setImmediate(() => {
        if (refill) this.store.refillSpares();
        fh.close().catch(() => {});
      });
    } catch (e) {
      await this.cleanupAfterFailure();
      throw e;
    }
  }

  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.cleanupAfterFailure();
  }

  private async cleanupAfterFailure(): Promise<void> {
    if (this.fh !== null) {
      await this.fh.close().catch(() => {});
      this.fh = null;
    }
    if (this.from !== null) this.store.refillSpares();
    // A failed fsync after the rename: the message must not stay queued, the client is told 4xx.
    rmSync(this.renamed ? this.store.path('incoming', this.id) : (this.from ?? this.store.path('tmp', this.id)), { force: true });
  }
}

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

/** Synchronous fsync of a directory (used at start-up only). */
export function fsyncDirSync(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Appends state records to the queue file at `path` at once (synchronous, no fsync: the page cache outlives a
 * crashed process, which is what this guards against). Used by a delivery agent to mark recipients it has
 * delivered before it answers qmgr, so that a qmgr that died meanwhile is not followed by a second delivery.
 * No O_CREAT; a short write is taken back. Throws on failure.
 */
export function appendRecordsSync(path: string, recs: readonly StateRecord[]): void {
  if (recs.length === 0) return;
  const buf = Buffer.from(recs.map(stateLine).join(''), 'utf8');
  const fd = openSync(path, constants.O_WRONLY | constants.O_APPEND);
  try {
    const size = fstatSync(fd).size;
    const n = writeSync(fd, buf);
    if (n !== buf.length) {
      ftruncateSync(fd, size);
      throw Object.assign(new Error(`short write appending a state record (${n} of ${buf.length} bytes)`), { code: 'ENOSPC' });
    }
  } finally {
    closeSync(fd);
  }
}
