// SPDX-License-Identifier: MIT
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FrameDecoder, encodeJson, type Frame } from '../ipc/index.ts';
import { CleanupPool, CleanupTransaction } from './cleanup-client.ts';
import type { Envelope } from '../core/envelope.ts';

const ENVELOPE: Envelope = {
  sender: 'a@example.com',
  recipients: [{ address: 'b@example.org' }],
  smtputf8: false,
  client: { ip: '127.0.0.1', port: 1, helo: 'client.test', protocol: 'ESMTP' },
};

/** A fake cleanup on a Unix socket: records every frame of one connection, answers {ok} after "end". */
async function fakeCleanup(): Promise<{ path: string; frames: Promise<Frame[]>; close(): void }> {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-cc-'));
  const path = join(dir, 'cleanup');
  let resolve!: (f: Frame[]) => void;
  const frames = new Promise<Frame[]>((r) => (resolve = r));
  const server: Server = createServer((sock) => {
    const dec = new FrameDecoder();
    const got: Frame[] = [];
    sock.on('data', (c: Buffer) => {
      for (const f of dec.push(c)) {
        got.push(f);
        if (f.kind === 'end') {
          sock.end(encodeJson({ ok: true, qid: '0123456789ABCDEF' }));
          resolve(got);
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, frames, close: () => { server.close(); rmSync(dir, { recursive: true, force: true }); } };
}

test('sends the lines handed over in one write as a single data frame, bytes in order', async () => {
  const c = await fakeCleanup();
  try {
    const tx = new CleanupTransaction(new CleanupPool(c.path), ENVELOPE);
    const lines = Array.from({ length: 1280 }, (_, i) => Buffer.from(`${i % 10}${'X'.repeat(77)}\r\n`));
    tx.write(lines);
    tx.write([Buffer.from('last\r\n')]);
    const r = await tx.end();
    assert.deepEqual(r, { ok: true, qid: '0123456789ABCDEF' });
    const frames = await c.frames;
    assert.deepEqual(frames.map((f) => f.kind), ['json', 'data', 'data', 'end']);
    assert.equal(frames[1]!.payload.length, 1280 * 80);
    assert.ok(Buffer.concat([frames[1]!.payload, frames[2]!.payload]).equals(Buffer.concat([...lines, Buffer.from('last\r\n')])));
  } finally {
    c.close();
  }
});

/** A fake cleanup that keeps connections open: answers each "end" with {ok} (or refuses messages whose body says so). */
async function poolingCleanup(): Promise<{ path: string; connections: () => number; close(): void }> {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-cp-'));
  const path = join(dir, 'cleanup');
  let connections = 0;
  const server: Server = createServer((sock) => {
    connections++;
    const dec = new FrameDecoder();
    let n = 0;
    let body = '';
    sock.on('data', (c: Buffer) => {
      for (const f of dec.push(c)) {
        if (f.kind === 'data') body += f.payload.toString('latin1');
        if (f.kind === 'abort') sock.end();
        if (f.kind !== 'end') continue;
        if (body.includes('REFUSE')) sock.end(encodeJson({ ok: false, code: 552, enhanced: '5.3.4', text: 'no' }));
        else sock.write(encodeJson({ ok: true, qid: `0123456789ABCD${String(n++).padStart(2, '0')}` }));
        body = '';
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, connections: () => connections, close: () => { server.close(); rmSync(dir, { recursive: true, force: true }); } };
}

test('messages one after another share one pooled connection; a refused message\'s connection is not reused', async () => {
  const c = await poolingCleanup();
  const pool = new CleanupPool(c.path);
  try {
    for (let i = 0; i < 3; i++) {
      const tx = new CleanupTransaction(pool, ENVELOPE);
      tx.write([Buffer.from(`message ${i}\r\n`)]);
      const r = await tx.end();
      assert.deepEqual(r, { ok: true, qid: `0123456789ABCD0${i}` });
    }
    assert.equal(c.connections(), 1);
    const refused = new CleanupTransaction(pool, ENVELOPE);
    refused.write([Buffer.from('REFUSE\r\n')]);
    const r = await refused.end();
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.reply.code, 552);
    // An abort before anything was sent leaves nothing behind either.
    new CleanupTransaction(pool, ENVELOPE).abort();
    const next = new CleanupTransaction(pool, ENVELOPE);
    next.write([Buffer.from('after\r\n')]);
    assert.equal((await next.end()).ok, true);
    assert.equal(c.connections(), 2, 'a new connection after the refusal');
  } finally {
    pool.close();
    c.close();
  }
});
