// SPDX-License-Identifier: MIT
// Unit tests for RequestPool: questions share kept connections, a server that goes away gives an Error.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeJson, FrameDecoder } from './framing.ts';
import { RequestPool } from './request.ts';

/** A JSON echo server on a Unix socket that counts its connections; `drop` closes a connection unanswered. */
async function echoServer(): Promise<{ path: string; connections: () => number; sockets: Set<Socket>; close(): void }> {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-rq-'));
  const path = join(dir, 'sock');
  let connections = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    connections++;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    const dec = new FrameDecoder();
    sock.on('data', (c: Buffer) => {
      for (const f of dec.push(c)) {
        const q = JSON.parse(f.payload.toString('utf8')) as { n: number; drop?: boolean };
        if (q.drop) sock.destroy();
        else sock.write(encodeJson({ echo: q.n }));
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, connections: () => connections, sockets, close: () => { server.close(); rmSync(dir, { recursive: true, force: true }); } };
}

test('questions one after another share one kept connection; concurrent ones get their own', async () => {
  const s = await echoServer();
  const pool = new RequestPool(s.path);
  try {
    for (let n = 0; n < 3; n++) assert.deepEqual(await pool.ask({ n }), { echo: n });
    assert.equal(s.connections(), 1);
    const answers = await Promise.all([1, 2, 3].map((n) => pool.ask({ n })));
    assert.deepEqual(answers, [{ echo: 1 }, { echo: 2 }, { echo: 3 }]);
    assert.equal(s.connections(), 3);
  } finally {
    pool.close();
    s.close();
  }
});

test('a server that drops the connection gives an Error, and the next question goes out on a new connection', async () => {
  const s = await echoServer();
  const pool = new RequestPool(s.path);
  try {
    assert.deepEqual(await pool.ask({ n: 1 }), { echo: 1 });
    const r = await pool.ask({ n: 2, drop: true });
    assert.ok(r instanceof Error, 'an Error, not an answer');
    assert.deepEqual(await pool.ask({ n: 3 }), { echo: 3 });
    assert.equal(s.connections(), 2);
  } finally {
    pool.close();
    s.close();
  }
});

test('a kept connection closed by the server while idle is not handed out again', async () => {
  const s = await echoServer();
  const pool = new RequestPool(s.path);
  try {
    assert.deepEqual(await pool.ask({ n: 1 }), { echo: 1 });
    for (const sock of s.sockets) sock.end();
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(await pool.ask({ n: 2 }), { echo: 2 });
    assert.equal(s.connections(), 2);
  } finally {
    pool.close();
    s.close();
  }
});
