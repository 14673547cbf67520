// SPDX-License-Identifier: MIT
// The children's compile cache without the privilege drop (every process is master's user): each child
// process has a private copy of the pristine cache, fresh at each start, gone when it exits; a message still
// goes through. (With the privilege drop, the shared read-only copies: lp-privilege.test.ts.)

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { childProcesses, startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { queueIdOf, sendMessage } from '../support/smtp-client.ts';

function cacheOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').find((kv) => kv.startsWith('NODE_COMPILE_CACHE='))?.slice(19);
  } catch {
    return undefined; // gone meanwhile
  }
}

function children(p: Running): { pid: number; role: string }[] {
  return childProcesses(p.proc.pid!).flatMap((c) => {
    const m = / child (\w+)$/.exec(c.args);
    return m === null ? [] : [{ pid: c.pid, role: m[1]! }];
  });
}

describe('compile cache, one user', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 2, toml: '[delivery]\nworkers = 2\n' });
  });
  after(async () => {
    if (p) assert.equal(await p.stop(), 0);
  });

  test('every child has a private copy of the pristine cache, filled before it started', () => {
    const root = join(p.dir, 'var/compile-cache');
    const pristine = readdirSync(join(root, 'pristine'));
    assert.equal(pristine.length, 1, 'the primer made one cache');
    const files = readdirSync(join(root, 'pristine', pristine[0]!)).sort();
    assert.ok(files.length > 50, `the primer cached every role's modules (${files.length} files)`);
    const seen = new Set<string>();
    for (const { pid, role } of children(p)) {
      const dir = cacheOf(pid)!;
      assert.ok(dir.startsWith(join(root, `${role}-`)), `${role} ${pid}: ${dir}`);
      assert.ok(!seen.has(dir), 'no two processes share a copy');
      seen.add(dir);
      assert.equal(statSync(dir).mode & 0o777, 0o700);
      assert.deepEqual(readdirSync(dir), pristine, 'named as Node looks for it');
      // Each process may have added what it compiled since; what the primer made is all there.
      const copied = new Set(readdirSync(join(dir, pristine[0]!)));
      for (const f of files) assert.ok(copied.has(f), `${role}: ${f}`);
    }
    assert.equal(seen.size, 6, 'cleanup, qmgr, two smtpd workers, two delivery agents');
  });

  test('a restarted child gets a fresh copy, its old one goes, and mail still flows', async () => {
    const old = children(p).find((c) => c.role === 'qmgr')!;
    const oldCache = cacheOf(old.pid)!;
    process.kill(old.pid, 'SIGKILL');
    const fresh = await waitFor('a new qmgr', () => children(p).find((c) => c.role === 'qmgr' && c.pid !== old.pid && cacheOf(c.pid) !== undefined), 20_000);
    assert.notEqual(cacheOf(fresh.pid), oldCache);
    await waitFor('the old copy removed', () => (existsSync(oldCache) ? undefined : true), 5000);
    const r = await sendMessage(p.port, 'a@example.com', ['postmaster@mx.test'], 'Subject: after a restart\n\nhello\n');
    assert.equal(r.code, 250, r.lines.join(' | '));
    const qid = queueIdOf(r);
    await p.waitLog((l) => l.event === 'delivery' && l.qid === qid && l.status === 'sent', 20_000);
  });
});

describe('compile cache, an unsafe data directory', () => {
  test('a data_dir others may replace gets no cache (logged), and mail flows all the same', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'palisade-cc-unsafe-'));
    // Anyone may rename data_dir (var/) out of this directory and put their own in its place.
    chmodSync(dir, 0o777);
    let p: Running | undefined;
    try {
      p = await startPalisade({ dir, workers: 1 });
      const off = await p.waitLog((l) => l.event === 'compile-cache-off');
      assert.match(String(off.err), /others may write/);
      for (const { pid, role } of children(p)) assert.equal(cacheOf(pid), undefined, `${role} has no cache`);
      const r = await sendMessage(p.port, 'a@example.com', ['postmaster@mx.test'], 'Subject: no cache\n\nhello\n');
      assert.equal(r.code, 250, r.lines.join(' | '));
    } finally {
      if (p) assert.equal(await p.stop(), 0);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
