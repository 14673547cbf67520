// SPDX-License-Identifier: MIT
// Unit tests for the queue store in a temporary directory: durable commit, abort, recovery, state records,
// moves, listings and refusal of corrupt files.

import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readdir, writeFile, appendFile, readFile, stat, chmod, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { execFileSync } from 'node:child_process';
import { QueueStore, appendRecordsSync } from './store.ts';
import { RESERVED, RESERVED_MODE, COMMITTED_MODE } from './reserved.ts';
import { CorruptQueueFile, MAGIC, type StateRecord } from './format.ts';
import { QUEUE_ID } from './id.ts';
import type { Envelope } from '../core/envelope.ts';

const envelope: Envelope = {
  sender: 'alice@example.com',
  recipients: [{ address: 'bob@example.net' }, { address: 'carol@example.org', notify: ['FAILURE'], orcpt: 'rfc822;carol@example.org' }],
  smtputf8: false,
  client: { ip: '192.0.2.1', port: 40000, helo: 'client.example', protocol: 'ESMTP' },
};

const message = Buffer.from('Subject: test\r\nMessage-ID: <1@example.com>\r\n\r\nHello \xe9\r\n', 'latin1');

let dir: string;
let store: QueueStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'palisade-queue-'));
  store = new QueueStore(join(dir, 'spool'));
  await store.init();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

// Writes a message in the given chunks and commits it; returns its ID.
async function enqueue(chunks: Buffer[] = [message], env: Envelope = envelope): Promise<string> {
  const w = await store.create(env, new Date('2026-01-02T03:04:05.000Z'));
  for (const c of chunks) await w.write(c);
  await w.commit();
  return w.id;
}

const names = (state: string) => readdir(join(dir, 'spool', state));

describe('QueueStore', () => {
  test('creates tmp, the state directories and private under the root', async () => {
    assert.deepEqual((await readdir(join(dir, 'spool'))).sort(), ['active', 'corrupt', 'deferred', 'hold', 'incoming', 'private', 'tmp']);
  });

  test('commit puts exactly one file named by the queue ID in incoming and leaves tmp empty', async () => {
    const id = await enqueue();
    assert.match(id, QUEUE_ID);
    assert.deepEqual(await names('incoming'), [id]);
    assert.deepEqual(await names('tmp'), []);
  });

  describe('reserved files', () => {
    const until = async (what: string, ok: () => Promise<boolean>) => {
      for (let i = 0; i < 400 && !(await ok()); i++) await new Promise((r) => setTimeout(r, 5));
      assert.ok(await ok(), what);
    };
    const modeOf = async (id: string) => (await stat(store.path('incoming', id))).mode & 0o777;
    const ready = async (s: QueueStore = store) => {
      s.reserved.use();
      await until(`${RESERVED} reserved files`, async () => s.reserved.readyCount === RESERVED);
    };
    afterEach(() => store.reserved.stop());

    test('are made write-only in incoming/ and are invisible to list, locate, show and committed', async () => {
      await ready();
      const reserved = await names('incoming');
      for (const id of reserved) {
        assert.equal(await modeOf(id), RESERVED_MODE);
        assert.equal(store.committed('incoming', id), false);
        assert.equal(await store.locate(id), null);
        assert.equal(await store.show(id), null);
      }
      assert.deepEqual(await store.list(), []);
    });

    test('a message takes the oldest one, is durable in it and readable; a new one replaces it', async () => {
      await ready();
      const before = (await names('incoming')).sort();
      const id = await enqueue();
      assert.equal(id, before[0], 'the oldest reserved file (IDs sort by time)');
      assert.equal(await modeOf(id), COMMITTED_MODE);
      assert.equal(store.committed('incoming', id), true);
      assert.deepEqual(await names('tmp'), []);
      assert.ok((await store.readMessage('incoming', id)).equals(message));
      assert.deepEqual((await store.list()).map((e) => e.id), [id]);
      await until('replaced', async () => store.reserved.readyCount === RESERVED);
      assert.equal((await names('incoming')).length, RESERVED + 1);
      const second = await enqueue();
      assert.equal(second, before[1], 'oldest first');
    });

    test('many messages at once (writes overlap on the thread pool) and one after the other all arrive whole', async () => {
      await ready();
      const bodies = Array.from({ length: 30 }, (_, i) => Buffer.from(`Subject: ${i}\r\n\r\n${'x'.repeat(i * 100)}\r\n`));
      const ids = await Promise.all(bodies.map((b) => enqueue([b])));
      for (let i = 0; i < 5; i++) {
        await new Promise((r) => setTimeout(r, 5));
        const b = Buffer.from(`Subject: later ${i}\r\n\r\nbody\r\n`);
        bodies.push(b);
        ids.push(await enqueue([b]));
      }
      assert.equal(new Set(ids).size, ids.length);
      for (const [i, id] of ids.entries()) {
        assert.equal(await modeOf(id), COMMITTED_MODE);
        assert.ok((await store.readMessage('incoming', id)).equals(bodies[i]!), `message ${i}`);
      }
      assert.equal((await store.list()).length, ids.length);
    });

    test('a message larger than memory holds streams into its reserved file and commits there', async () => {
      await ready();
      const first = (await names('incoming')).sort()[0];
      const big = Buffer.alloc(700 * 1024);
      for (let i = 0; i < big.length; i++) big[i] = (i * 13 + 5) & 0xff;
      const w = await store.create(envelope);
      assert.equal(w.id, first);
      for (let i = 0; i < big.length; i += 65536) await w.write(big.subarray(i, i + 65536));
      assert.equal(store.committed('incoming', w.id), false, 'not a message before commit');
      await w.commit();
      assert.equal(await modeOf(w.id), COMMITTED_MODE);
      assert.deepEqual(await names('tmp'), []);
      assert.ok((await store.readMessage('incoming', w.id)).equals(big));
    });

    test('abort removes the reserved file it took, even after streaming into it', async () => {
      await ready();
      const w = await store.create(envelope);
      await w.write(Buffer.alloc(300 * 1024, 1));
      await w.abort();
      assert.ok(!(await names('incoming')).includes(w.id));
      assert.deepEqual(await store.list(), []);
    });

    test('reserved files older than the limit are removed and not used; the message gets a fresh ID', async () => {
      const s2 = new QueueStore(join(dir, 'spool'), { reservedMaxAgeMs: 0 });
      await ready(s2);
      const old = await names('incoming');
      await new Promise((r) => setTimeout(r, 5));
      const w = await s2.create(envelope);
      await w.write(message);
      await w.commit();
      assert.ok(!old.includes(w.id));
      assert.ok(w.id > old.sort().at(-1)!, 'the new ID sorts after the old ones');
      await until('old ones removed', async () => (await names('incoming')).every((n) => !old.includes(n)));
      assert.equal(await modeOf(w.id), COMMITTED_MODE);
      await s2.reserved.stop();
    });

    test('stop removes the ready ones', async () => {
      await ready();
      await store.reserved.stop();
      assert.deepEqual(await names('incoming'), []);
      // Ones still being made when it is called are removed once made, before it resolves.
      store.reserved.use();
      await store.reserved.stop();
      assert.deepEqual(await names('incoming'), []);
    });

    test('recover keeps a reserved file that holds a whole message, and removes empty and torn ones', async () => {
      const whole = await enqueue();
      const torn = await enqueue();
      const tornPath = store.path('incoming', torn);
      const raw = await readFile(tornPath);
      await writeFile(tornPath, raw.subarray(0, raw.length - 10));
      // A body that does not match the end record's hash is torn too.
      const bad = await enqueue([Buffer.from('Subject: a\r\n\r\nabc\r\n')]);
      const badRaw = await readFile(store.path('incoming', bad));
      const at = badRaw.indexOf('abc');
      badRaw[at] = 0x7a;
      await writeFile(store.path('incoming', bad), badRaw);
      await writeFile(store.path('incoming', '0000000000000001'), '');
      for (const id of [whole, torn, bad, '0000000000000001']) await chmod(store.path('incoming', id), RESERVED_MODE);
      const committedOne = await enqueue();
      const res = await new QueueStore(join(dir, 'spool')).recover();
      assert.deepEqual(res.restored, [whole]);
      assert.deepEqual(res.removed.sort(), [torn, bad].sort());
      assert.deepEqual((await names('incoming')).sort(), [whole, committedOne].sort());
      assert.equal(await modeOf(whole), COMMITTED_MODE);
      assert.ok((await store.readMessage('incoming', whole)).equals(message));
    });

    test('recover run as the unprivileged owner of the spool (as cleanup runs) keeps a whole reserved file too', { skip: process.getuid?.() !== 0 && 'needs root to hand the spool to nobody' }, async () => {
      const whole = await enqueue();
      const torn = await enqueue();
      const raw = await readFile(store.path('incoming', torn));
      await writeFile(store.path('incoming', torn), raw.subarray(0, raw.length - 10));
      for (const id of [whole, torn]) await chmod(store.path('incoming', id), RESERVED_MODE);
      await chmod(dir, 0o755);
      execFileSync('chown', ['-R', '65534:65534', join(dir, 'spool')]);
      const script = `const { QueueStore } = await import(${JSON.stringify(new URL('./store.ts', import.meta.url).href)});
        process.stdout.write(JSON.stringify(await new QueueStore(${JSON.stringify(join(dir, 'spool'))}).recover()));`;
      const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { uid: 65534, gid: 65534, encoding: 'utf8' });
      assert.deepEqual(JSON.parse(out), { removed: [torn], restored: [whole], unreadable: [] });
      assert.equal(await modeOf(whole), COMMITTED_MODE);
      assert.ok((await store.readMessage('incoming', whole)).equals(message));
    });

    test('recover removes the spare/ directory of earlier versions', async () => {
      await mkdir(join(dir, 'spool', 'spare'));
      await writeFile(join(dir, 'spool', 'spare', '123.1'), '');
      await new QueueStore(join(dir, 'spool')).recover();
      assert.ok(!(await readdir(join(dir, 'spool'))).includes('spare'));
    });
  });

  test('a committed file starts with the magic line', async () => {
    const id = await enqueue();
    const raw = await readFile(store.path('incoming', id));
    assert.equal(raw.subarray(0, MAGIC.length).toString('latin1'), MAGIC);
  });

  test('read returns the envelope with ID and arrival, and readMessage the message byte-identical', async () => {
    const id = await enqueue([message.subarray(0, 5), message.subarray(5)]);
    const q = await store.read('incoming', id);
    assert.equal(q.envelope.id, id);
    assert.equal(q.envelope.arrival, '2026-01-02T03:04:05.000Z');
    assert.equal(q.envelope.sender, envelope.sender);
    assert.deepEqual(q.envelope.recipients, envelope.recipients);
    assert.deepEqual(q.envelope.client, envelope.client);
    assert.equal(q.messageLength, message.length);
    assert.match(q.sha256, /^[0-9a-f]{64}$/);
    assert.deepEqual(q.records, []);
    assert.ok((await store.readMessage('incoming', id)).equals(message));
  });

  test('keeps an empty message', async () => {
    const id = await enqueue([]);
    assert.equal((await store.readMessage('incoming', id)).length, 0);
  });

  test('keeps a message larger than one write batch byte-identical', async () => {
    const big = Buffer.alloc(700 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
    const chunks: Buffer[] = [];
    for (let i = 0; i < big.length; i += 65536) chunks.push(big.subarray(i, i + 65536));
    const id = await enqueue(chunks);
    assert.ok((await store.readMessage('incoming', id)).equals(big));
  });

  test('shows nothing in the queue before commit', async () => {
    const w = await store.create(envelope);
    await w.write(message);
    assert.deepEqual(await names('incoming'), []);
    assert.deepEqual(await store.list(), []);
    await w.commit();
    assert.equal((await store.list()).length, 1);
  });

  test('abort leaves nothing behind in tmp or incoming', async () => {
    const w = await store.create(envelope);
    await w.write(Buffer.alloc(300 * 1024, 1)); // over one batch, so tmp/ID exists on disk
    assert.deepEqual(await names('tmp'), [w.id]);
    await w.abort();
    assert.deepEqual(await names('tmp'), []);
    assert.deepEqual(await names('incoming'), []);
  });

  test('gives each message of a store a different ID', async () => {
    const ids = await Promise.all(Array.from({ length: 20 }, () => enqueue()));
    assert.equal(new Set(ids).size, 20);
    assert.equal((await names('incoming')).length, 20);
  });

  test('recover removes everything in tmp and returns what it removed', async () => {
    await writeFile(join(dir, 'spool', 'tmp', '0000000000000001'), 'partial');
    await writeFile(join(dir, 'spool', 'tmp', 'junk'), 'x');
    const id = await enqueue();
    assert.deepEqual((await store.recover()).removed.sort(), ['0000000000000001', 'junk']);
    assert.deepEqual(await names('tmp'), []);
    assert.deepEqual(await names('incoming'), [id]);
  });

  test('recover on an empty tmp removes nothing', async () => {
    assert.deepEqual(await store.recover(), { removed: [], restored: [], unreadable: [] });
  });

  test('appended state records show up in read, list and show, the last per recipient winning', async () => {
    const id = await enqueue();
    const deferred: StateRecord = { rcpt: 0, state: 'deferred', dsn: '4.4.1', reply: 'connection refused', at: '2026-01-02T03:05:00.000Z', next: '2026-01-02T03:10:00.000Z' };
    const sent: StateRecord = { rcpt: 1, state: 'sent', dsn: '2.0.0', reply: '250 ok', at: '2026-01-02T03:05:01.000Z' };
    await store.appendState('incoming', id, deferred);
    await store.appendState('incoming', id, sent);
    assert.deepEqual((await store.read('incoming', id)).records, [deferred, sent]);
    const [entry] = await store.list();
    assert.equal(entry!.id, id);
    assert.equal(entry!.state, 'incoming');
    assert.deepEqual(entry!.recipients, [
      { address: 'bob@example.net', state: 'deferred', last_reply: 'connection refused', next_retry: '2026-01-02T03:10:00.000Z', dsn: '4.4.1' },
      { address: 'carol@example.org', state: 'sent', last_reply: '250 ok', next_retry: null, dsn: '2.0.0' },
    ]);
    const bounced: StateRecord = { rcpt: 0, state: 'bounced', dsn: '5.1.1', reply: '550 no such user', at: '2026-01-02T03:15:00.000Z' };
    await store.appendState('incoming', id, bounced);
    const shown = await store.show(id);
    assert.equal(shown!.recipients[0]!.state, 'bounced');
    assert.equal(shown!.recipients[0]!.dsn, '5.1.1');
  });

  test('does not change the message when state records are appended', async () => {
    const id = await enqueue();
    await store.appendState('incoming', id, { rcpt: 0, state: 'sent', dsn: '2.0.0', reply: 'ok', at: 'x' });
    assert.ok((await store.readMessage('incoming', id)).equals(message));
  });

  test('appendRecordsSync (a delivery agent\'s mark) adds records the next read sees, and creates no file', async () => {
    const id = await enqueue();
    const rec: StateRecord = { rcpt: 0, state: 'sent', dsn: '2.0.0', reply: '250 ok', at: '2026-01-02T03:04:05.000Z' };
    appendRecordsSync(store.path('incoming', id), [rec]);
    assert.deepEqual((await store.read('incoming', id)).records, [rec]);
    assert.throws(() => appendRecordsSync(store.path('incoming', '0000000000000000'), [rec]), { code: 'ENOENT' });
    assert.equal(await store.locate('0000000000000000'), null);
  });

  test('appending a state record to a file that is gone fails (ENOENT) and creates nothing', async () => {
    const id = await enqueue();
    await rm(store.path('incoming', id));
    await assert.rejects(store.appendState('incoming', id, { rcpt: 0, state: 'sent', dsn: '2.0.0', reply: 'ok', at: 'x' }), { code: 'ENOENT' });
    assert.equal(await store.locate(id), null);
  });

  test('ignores a state record torn by a crash mid-append', async () => {
    const id = await enqueue();
    const rec: StateRecord = { rcpt: 0, state: 'sent', dsn: '2.0.0', reply: 'ok', at: '2026-01-02T03:05:00.000Z' };
    await store.appendState('incoming', id, rec);
    await appendFile(store.path('incoming', id), 'R {"rcpt":1,"state":"bou');
    assert.deepEqual((await store.read('incoming', id)).records, [rec]);
    assert.equal((await store.show(id))!.recipients[1]!.state, 'pending');
  });

  test('refuses a file with a bad magic as CorruptQueueFile', async () => {
    const id = await enqueue();
    const raw = await readFile(store.path('incoming', id));
    raw.write('X', 0, 'latin1');
    await writeFile(store.path('incoming', id), raw);
    await assert.rejects(store.read('incoming', id), (e: unknown) => e instanceof CorruptQueueFile && /magic/.test(e.message));
  });

  test('refuses a file truncated inside the message as CorruptQueueFile', async () => {
    const id = await enqueue();
    const raw = await readFile(store.path('incoming', id));
    await writeFile(store.path('incoming', id), raw.subarray(0, raw.length - 80));
    await assert.rejects(store.read('incoming', id), CorruptQueueFile);
  });

  test('refuses a file whose end record is missing as CorruptQueueFile', async () => {
    const w = await store.create(envelope);
    await w.write(message);
    await w.commit();
    const raw = await readFile(store.path('incoming', w.id));
    const endAt = raw.lastIndexOf(Buffer.from('\nE ')) + 1;
    raw.write('Z', endAt, 'latin1');
    await writeFile(store.path('incoming', w.id), raw);
    await assert.rejects(store.read('incoming', w.id), CorruptQueueFile);
  });

  test('leaves a corrupt file out of the listing', async () => {
    await enqueue();
    await writeFile(join(dir, 'spool', 'incoming', '0000000000000002'), 'not a queue file');
    assert.equal((await store.list()).length, 1);
  });

  test('move takes a message between states and locate and show follow it', async () => {
    const id = await enqueue();
    await store.move(id, 'incoming', 'active');
    assert.deepEqual(await names('incoming'), []);
    assert.deepEqual(await names('active'), [id]);
    assert.equal(await store.locate(id), 'active');
    await store.move(id, 'active', 'hold');
    assert.equal(await store.locate(id), 'hold');
    assert.equal((await store.show(id))!.state, 'hold');
    assert.ok((await store.readMessage('hold', id)).equals(message));
  });

  test('move refuses a name that is not a queue ID', async () => {
    await assert.rejects(store.move('../../etc/passwd', 'incoming', 'active'), /bad queue id/);
  });

  test('move of an unknown ID rejects and moves nothing', async () => {
    await assert.rejects(store.move('0000000000000003', 'incoming', 'active'), { code: 'ENOENT' });
  });

  test('list filters by state and sorts oldest first', async () => {
    const a = await enqueue();
    const b = await enqueue();
    const c = await enqueue();
    await store.move(b, 'incoming', 'deferred');
    await store.move(c, 'incoming', 'corrupt');
    assert.deepEqual((await store.list()).map((e) => e.id), [a, b]);
    assert.deepEqual((await store.list(['deferred'])).map((e) => e.id), [b]);
    assert.deepEqual((await store.list(['corrupt'])).map((e) => e.id), [c]);
  });

  test('show and locate answer null for an unknown or malformed ID', async () => {
    assert.equal(await store.show('0000000000000004'), null);
    assert.equal(await store.locate('nope'), null);
  });

  test('any message in any chunks reads back byte-identical', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 2000 }), { maxLength: 8 }), async (parts) => {
        const chunks = parts.map((p) => Buffer.from(p));
        const id = await enqueue(chunks);
        assert.ok((await store.readMessage('incoming', id)).equals(Buffer.concat(chunks)));
      }),
      { numRuns: 30 },
    );
  });
});
