// SPDX-License-Identifier: MIT
// QueueStore: the spool directories, durable commit (pre-made files in incoming/, or fsync file, rename, fsync
// directory), state moves, reads.

import { createHash, type Hash } from 'node:crypto';
import { isAscii } from 'node:buffer';
import { chmodSync, constants, open as openCb, promises as fsp, openSync, writev as writevCb, fsyncSync, fstatSync, ftruncateSync, closeSync, createReadStream, readSync, statSync, writevSync, writeSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DirSync } from './dirsync.ts';
import { WritePacer } from './pacer.ts';
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
const ALL_DIRS = ['tmp', ...MESSAGE_STATES, 'private'] as const;
// Queue files cleanup makes ahead of need in incoming/ (reserved files): this many kept ready.
export const RESERVED = 8;
// A reserved file older than this is not used (its queue ID, made when the file was, would be too far from
// the message's arrival for IDs to sort by time): it is removed and a fresh one made.
const RESERVED_MAX_AGE_MS = 10_000;
const QUIET_RESERVED = 2;
/**
 * The mode bits of queue files. A reserved file in incoming/ is write-only until its message is durable in it;
 * then it becomes readable: readers of incoming/ take only readable files (`committed`). Files that reach
 * incoming/ by rename from tmp/ are complete already and are created readable.
 */
export const RESERVED_MODE = 0o200;
export const COMMITTED_MODE = 0o600;
// A reserved file recovery is checking: readable by its owner so it can be, not yet a message.
const VERIFYING_MODE = 0o400;

/** A file in incoming/ is a message when its owner may both read and write it. */
export function isCommittedMode(mode: number): boolean {
  return (mode & 0o600) === 0o600;
}

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
  private readonly reservedMaxAgeMs: number;
  /** How each commit writes (synchronously when idle); shared by the store's writers. */
  readonly pacer = new WritePacer();

  constructor(dir: string, opts: { reservedMaxAgeMs?: number } = {}) {
    this.dir = dir;
    this.reservedMaxAgeMs = opts.reservedMaxAgeMs ?? RESERVED_MAX_AGE_MS;
  }

  /** Path of a state directory. */
  path(state: MessageState | 'tmp' | 'private', id?: string): string {
    return id === undefined ? join(this.dir, state) : join(this.dir, state, id);
  }

  /** Creates the directory tree (mode 0700 for state directories unless told otherwise). */
  async init(mode = 0o700): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o710 });
    for (const d of ALL_DIRS) await fsp.mkdir(join(this.dir, d), { recursive: true, mode });
  }

  /**
   * Crash recovery when cleanup starts (the only writer of tmp/ and of reserved files). Removes tmp/* and the
   * reserved files in incoming/ that hold no complete message: neither was ever acknowledged. A reserved file
   * that does hold a complete message (the machine stopped after the message was durable but before its mode
   * change reached the disk) may have been acknowledged: it is marked committed and kept. One that cannot be
   * read (an I/O error) is left as it is, still not a message, and tried again at the next start. Returns the
   * names removed, the IDs kept that way, and the ones left.
   */
  async recover(): Promise<{ removed: string[]; restored: string[]; unreadable: string[] }> {
    // spare/ of earlier versions held empty files only.
    await fsp.rm(join(this.dir, 'spare'), { recursive: true, force: true }).catch(() => {});
    const removed: string[] = [];
    const restored: string[] = [];
    const unreadable: string[] = [];
    for (const name of await fsp.readdir(this.path('tmp'))) {
      await fsp.rm(join(this.path('tmp'), name), { force: true });
      removed.push(name);
    }
    if (removed.length > 0) await this.syncDir('tmp');
    for (const name of await fsp.readdir(this.path('incoming'))) {
      const path = this.path('incoming', name);
      let st;
      try {
        st = statSync(path);
      } catch {
        continue;
      }
      if (!st.isFile() || isCommittedMode(st.mode)) continue;
      let complete = false;
      if (st.size > 0) {
        try {
          // Readable by its owner (cleanup's user) so it can be checked, still not a message: a crash now
          // leaves it for the next start.
          chmodSync(path, VERIFYING_MODE);
          complete = await verifyQueueFile(path);
        } catch (e) {
          // A file that does not parse is torn (never acknowledged); one that cannot be read is kept.
          if (!(e instanceof CorruptQueueFile)) {
            unreadable.push(name);
            continue;
          }
        }
      }
      if (complete) {
        chmodSync(path, COMMITTED_MODE);
        restored.push(name);
      } else {
        rmSync(path, { force: true });
        if (st.size > 0) removed.push(name);
      }
    }
    return { removed, restored, unreadable };
  }

  /**
   * Whether `id` in `state` is a message. Everything in the state directories is, except a reserved file in
   * incoming/ that cleanup has not committed yet (still write-only).
   */
  committed(state: MessageState, id: string): boolean {
    if (state !== 'incoming') return true;
    try {
      return isCommittedMode(statSync(this.path(state, id)).mode);
    } catch {
      return false;
    }
  }

  /** Starts a new message with `envelope`; the returned writer owns its file until commit or abort. */
  async create(envelope: Envelope, arrival = new Date()): Promise<QueueWriter> {
    const reserved = this.usesReserved ? this.takeReserved() : null;
    const id = reserved?.id ?? this.nextId();
    const full: QueueEnvelope = { id, arrival: arrival.toISOString(), ...envelope };
    return new FileWriter(this, id, full, reserved);
  }

  // ---- reserved files ----------------------------------------------------------------------------------
  // Queue files made ahead of need, under their final name in incoming/: created write-only and O_DSYNC, and
  // made durable there (the directory fsync, shared by all made meanwhile) before one is used. A new message
  // takes one (its queue ID is the file's name); at the end of DATA the message is written into it with one
  // write that returns once the disk has the data, and the file is made readable: committed. No file is
  // created, renamed or directory-fsynced between the end of DATA and the 250, and no thread-pool hand-off is
  // needed when cleanup is otherwise idle (WritePacer).
  private reserved: Reserved[] = [];
  // How many to keep ready: RESERVED while mail flows; a few after a quiet spell, when the ready ones had
  // grown too old to use (then each message would otherwise replace all of them).
  private reserveTarget = RESERVED;
  private readonly making = new Set<Promise<void>>();

  /** Reserved files are used (cleanup, the one writer of the queue, turns this on). */
  usesReserved = false;

  /** Turns reserved files on and makes the first ones. */
  useReserved(): void {
    this.usesReserved = true;
    this.refillReserved();
  }

  // The oldest ready reserved file, or null (none ready, or the ready ones have grown too old: those are
  // removed and fresh ones made; this message's file is created the classic way meanwhile).
  private takeReserved(): Reserved | null {
    const r = this.reserved[0];
    if (r === undefined) {
      this.refillReserved();
      return null;
    }
    if (Date.now() - r.made > this.reservedMaxAgeMs) {
      this.dropReserved();
      this.reserveTarget = QUIET_RESERVED;
      this.refillReserved();
      return null;
    }
    this.reserveTarget = RESERVED;
    return this.reserved.shift()!;
  }

  /**
   * Makes reserved files in the background up to the target. One at a time as they are used: making them in
   * batches (one directory fsync for several) was slower at one session, the burst of creations competing
   * with the next message for the CPU.
   */
  refillReserved(): void {
    if (!this.usesReserved) return;
    while (this.reserved.length + this.making.size < this.reserveTarget) {
      const id = this.nextId();
      const made = this.reserve(id, this.path('incoming', id)).finally(() => this.making.delete(made));
      this.making.add(made);
    }
  }

  private async reserve(id: string, path: string): Promise<void> {
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
    let ok = this.usesReserved;
    if (ok) {
      try {
        await this.syncDir('incoming');
      } catch {
        ok = false;
      }
    }
    if (!ok || !this.usesReserved) {
      closeQuietly(fd);
      rmSync(path, { force: true });
      return;
    }
    // In ID order (they are made concurrently and become ready in any order): taken oldest first.
    const r: Reserved = { fd, id, path, made: Date.now() };
    let i = this.reserved.length;
    while (i > 0 && this.reserved[i - 1]!.id > id) i--;
    this.reserved.splice(i, 0, r);
  }

  /** Reserved files ready for use now. */
  get reservedReady(): number {
    return this.reserved.length;
  }

  /** Removes the ready reserved files (at shutdown; ones still being made are removed when done). */
  dropReserved(): void {
    const all = this.reserved;
    this.reserved = [];
    for (const r of all) {
      closeQuietly(r.fd);
      rmSync(r.path, { force: true });
    }
  }

  /** Stops making reserved files and removes them, the ones still being made once they are. */
  async stopReserving(): Promise<void> {
    this.usesReserved = false;
    this.dropReserved();
    await Promise.all([...this.making]);
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

  /**
   * Removes a message's file; one already gone is fine. One unlink on the thread pool: an unlink can wait on
   * the file system, and fs.rm would first lstat (a second hand-off, each a wake-up of a pool thread).
   */
  async remove(state: MessageState, id: string): Promise<void> {
    try {
      await fsp.unlink(this.path(state, id));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }

  /** Finds which state directory holds `id`, or null. */
  async locate(id: string): Promise<MessageState | null> {
    if (!QUEUE_ID.test(id)) return null;
    for (const s of MESSAGE_STATES) {
      try {
        await fsp.access(this.path(s, id));
        if (this.committed(s, id)) return s;
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
          if (!QUEUE_ID.test(id) || seen.has(id) || !this.committed(s, id)) continue;
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

/** Whether the file at `path` parses and its message matches the end record's SHA-256 (reads it whole). */
export async function verifyQueueFile(path: string): Promise<boolean> {
  const q = await readQueueFile(path);
  const hash = createHash('sha256');
  if (q.messageLength > 0) {
    for await (const c of createReadStream(path, { start: q.messageOffset, end: q.messageOffset + q.messageLength - 1 })) hash.update(c as Buffer);
  }
  return hash.digest('hex') === q.sha256;
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

/** A reserved queue file: made in incoming/ under its ID, durable there, write-only until committed. */
interface Reserved {
  readonly fd: number;
  readonly id: string;
  readonly path: string;
  readonly made: number;
}

// The writer uses synchronous writes and renames: on the page cache they take microseconds, and a hand-off to
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

  async commit(): Promise<void> {
    invariant(!this.done, 'commit twice');
    this.done = true;
    const end = Buffer.from(endRecord(this.hash.digest('hex'), this.eightBit), 'latin1');
    this.pending.push(end);
    this.pendingBytes += end.length;
    const lengths = Buffer.from(lengthsLine(this.envJson.length, this.size), 'latin1');
    try {
      if (this.fh === null) {
        // The whole message is still in memory (the common case): written once, lengths already right.
        this.pending[0] = Buffer.concat([Buffer.from(MAGIC, 'latin1'), lengths]);
        if (this.reserved !== null) await this.writeReserved(this.reserved);
        else await this.flush();
      } else {
        await this.flush();
        // Patch the message length into the fixed-width lengths line; no reader takes the file yet.
        writeSync(this.fh.fd, lengths, 0, LENGTHS_SIZE_BYTES, MAGIC.length);
      }
      if (this.reserved !== null) {
        // Streamed through the ordinary descriptor: one fsync makes data and size durable (the name already is).
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
      // Closing after a durable commit cannot lose anything, and the next reserved files are not needed
      // before the next message: both wait until the caller has sent its answer.
      const fh = this.fh;
      this.fh = null;
      setImmediate(() => {
        this.closeReserved();
        this.store.refillReserved();
        fh?.close().catch(() => {});
      });
    } catch (e) {
      await this.cleanupAfterFailure();
      throw e;
    }
  }

  // Writes the whole message into the reserved file (O_DSYNC: durable when the write returns), synchronously
  // when cleanup is idle, else on the thread pool so that other messages' writes overlap with it.
  private async writeReserved(r: Reserved): Promise<void> {
    const bufs = this.takePending();
    const pacer = this.store.pacer;
    const start = performance.now();
    if (pacer.sync(start)) {
      writeAllSync(r.fd, bufs);
      pacer.syncDone(start, performance.now());
      return;
    }
    await pacer.pooled(() => writeAll(r.fd, bufs));
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
    if (this.committed) return;
    // Never acknowledged: the file goes. After a failed fsync of a renamed file the message must not stay
    // queued either (the client is told 4xx). A reserved file is still write-only, so no reader has it.
    const path = this.reserved !== null ? this.reserved.path : this.renamed ? this.store.path('incoming', this.id) : this.store.path('tmp', this.id);
    rmSync(path, { force: true });
    this.store.refillReserved();
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

const openFd = promisify(openCb) as (path: string, flags: number, mode: number) => Promise<number>;
const writevFd = promisify(writevCb) as unknown as (fd: number, bufs: readonly Buffer[]) => Promise<{ bytesWritten: number }>;

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
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
