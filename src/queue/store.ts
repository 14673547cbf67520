// SPDX-License-Identifier: MIT
// QueueStore: the spool directories, crash recovery, state moves, records, reads and listings. Writing a new
// message is writer.ts (into a reserved file, reserved.ts, or through tmp/).

import { createHash } from 'node:crypto';
import { chmodSync, constants, promises as fsp, openSync, fsyncSync, fstatSync, ftruncateSync, closeSync, createReadStream, readSync, statSync, writeSync, rmSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { DirSync } from './dirsync.ts';
import { WritePacer } from './pacer.ts';
import { COMMITTED_MODE, isCommittedMode, ReservedFiles } from './reserved.ts';
import { FileWriter, type QueueWriter } from './writer.ts';
import { createIdGenerator, QUEUE_ID } from './id.ts';
import {
  CorruptQueueFile, HEADER_SIZE, MAGIC, parseHead, parseTail, recipientRecords, stateLine,
  type ParsedQueueFile, type QueueEnvelope, type RecipientState, type StateRecord,
} from './format.ts';
import type { Envelope } from '../core/envelope.ts';
import { invariant } from '../core/invariant.ts';

/** Message states = directories under the queue root (besides tmp/ and private/). */
export type MessageState = 'incoming' | 'active' | 'deferred' | 'hold' | 'corrupt';
export const MESSAGE_STATES: readonly MessageState[] = ['incoming', 'active', 'deferred', 'hold', 'corrupt'];
const ALL_DIRS = ['tmp', ...MESSAGE_STATES, 'private'] as const;
// A reserved file recovery is checking: readable by its owner so it can be, not yet a message.
const VERIFYING_MODE = 0o400;

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
  /** How each commit writes (synchronously when idle); shared by the store's writers. */
  readonly pacer = new WritePacer();
  /** Queue files made ahead of need in incoming/ (off until cleanup, the one writer, turns them on). */
  readonly reserved: ReservedFiles;

  constructor(dir: string, opts: { reservedMaxAgeMs?: number } = {}) {
    this.dir = dir;
    this.reserved = new ReservedFiles({
      path: (id) => this.path('incoming', id),
      nextId: this.nextId,
      ...(opts.reservedMaxAgeMs !== undefined ? { maxAgeMs: opts.reservedMaxAgeMs } : {}),
    });
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
  create(envelope: Envelope, arrival = new Date()): QueueWriter {
    const reserved = this.reserved.take();
    const id = reserved?.id ?? this.nextId();
    const full: QueueEnvelope = { id, arrival: arrival.toISOString(), ...envelope };
    return new FileWriter(this, id, full, reserved);
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

  /**
   * The same, synchronous: what qmgr uses for a message it has finished. Unlinking a small file is
   * microseconds; a hand-off to the thread pool costs two wake-ups, and the pool thread woken on qmgr's CPU
   * preempted qmgr in the middle of its turn.
   */
  removeSync(state: MessageState, id: string): void {
    try {
      unlinkSync(this.path(state, id));
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
  const last = recipientRecords(q.records);
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
