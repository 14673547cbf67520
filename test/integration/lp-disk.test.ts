// SPDX-License-Identifier: MIT
// A full disk degrades, never corrupts: below [queue] min_free_space MAIL gets 452 4.3.1 while queued mail
// stays intact and delivery goes on; with the space back, mail is accepted again. A disk that fills during a
// message (ENOSPC) costs that message a 451 4.3.0 and leaves no partial file. The spool lives on a small
// tmpfs mounted for the test (root only; CI runs as root and skips none).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf, summary, type SmtpClient } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { KEEP_QUEUED, partialFiles, queuedIds, readQueued, spoolFiles } from '../support/queue.ts';

const IN_CI = !['', '0', 'false'].includes((process.env.CI ?? '').toLowerCase());
const MiB = 1024 * 1024;

/** Mounts a tmpfs of `size` at `dir` (mode 0755: tmpfs's default 1777 is world-writable, which Palisade refuses). */
function mountTmpfs(dir: string, size: string): void {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir], { stdio: 'pipe' });
}

/** Unmounts `dir`, lazily if something still holds it. */
function unmount(dir: string): void {
  try {
    execFileSync('umount', [dir], { stdio: 'pipe' });
  } catch {
    execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
  }
}

// Outside CI a machine may not allow mounts (not root, a container): skip there, never in CI.
function mountSkip(): string | false {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-lp-mountcheck-'));
  try {
    mountTmpfs(dir, '1m');
    unmount(dir);
    return false;
  } catch (e) {
    return IN_CI ? false : `cannot mount a tmpfs here (${(e as Error).message.split('\n')[0]})`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
const SKIP = mountSkip();

/** Free bytes on the file system holding `path`, as an unprivileged writer sees it. */
function freeBytes(path: string): number {
  const st = statfsSync(path);
  return st.bavail * st.bsize;
}

/** A fresh test directory whose var/ (the data_dir) is a tmpfs of `size`. */
function tmpfsDir(size: string): { dir: string; dataDir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-lp-disk-'));
  const dataDir = join(dir, 'var');
  mkdirSync(dataDir);
  mountTmpfs(dataDir, size);
  return {
    dir,
    dataDir,
    cleanup: () => {
      try {
        unmount(dataDir);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** One message in a fresh session; returns the final reply. */
async function send(port: number, rcpt: string, body: string | Buffer): Promise<{ code: string; qid?: string }> {
  const c = await openSession(port);
  try {
    await c.ok('MAIL FROM:<a@example.com>');
    await c.ok(`RCPT TO:<${rcpt}>`);
    await c.ok('DATA', 354);
    c.write(body);
    c.write('.\r\n');
    const r = await c.read(20_000);
    assert.ok(r !== null, 'a reply to the final dot, not a dropped connection');
    return r.code === 250 ? { code: summary(r), qid: queueIdOf(r) } : { code: summary(r) };
  } finally {
    c.close();
  }
}

const message = (id: string) => `Message-ID: <${id}@client.test>\r\nSubject: ${id}\r\n\r\nbody of ${id}\r\n`;

describe('min_free_space = 1 MB on a 16 MB spool file system (the compile cache takes a few MB of it)', { skip: SKIP }, () => {
  let fs: ReturnType<typeof tmpfsDir>;
  let peer: SmtpPeer;
  let p: Running;
  const filler = () => join(fs.dataDir, 'filler');
  before(async () => {
    fs = tmpfsDir('16m');
    // The peer tempfails at first, so the first messages stay queued through the disk-low phase.
    peer = await startSmtpPeer({ tempfailRcpt: 1_000_000 });
    p = await startPalisade({
      dir: fs.dir,
      workers: 1,
      toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n` +
        `[queue]\nmin_free_space = ${MiB}\nretry_min = "1s"\nretry_max = "2s"\nscan_interval = "500ms"\n` +
        '[delivery]\nworkers = 1\nconnect_timeout = "2s"\ntimeout = "5s"\n',
    });
  });
  after(async () => {
    try {
      await p?.stop();
      await peer?.close();
    } finally {
      fs.cleanup();
    }
  });

  const ids: string[] = [];

  test('filling the disk below min_free_space makes MAIL answer 452 4.3.1 within a couple of seconds', async (t) => {
    for (const name of ['disk-a', 'disk-b']) {
      const r = await send(p.port, `${name}@remote.test`, message(name));
      assert.equal(r.code, '250 2.0.0');
      ids.push(r.qid!);
    }
    await waitFor('both deferred by the peer', () => (ids.every((id) => p.logs().some((l) => l.event === 'delivery' && l.qid === id && l.status === 'deferred')) ? true : undefined), 10_000);
    writeFileSync(filler(), Buffer.alloc(freeBytes(fs.dataDir) - 512 * 1024));
    t.diagnostic(`free after filling: ${Math.round(freeBytes(fs.dataDir) / 1024)} KiB`);
    assert.ok(freeBytes(fs.dataDir) < MiB);
    const filled = Date.now();
    let c: SmtpClient | null = await openSession(p.port);
    try {
      const reply = await waitFor('452 at MAIL', async () => {
        const r = await c!.cmd('MAIL FROM:<a@example.com>');
        if (r.code === 250) {
          await c!.ok('RSET');
          return undefined;
        }
        return r;
      }, 5000);
      assert.equal(summary(reply), '452 4.3.1', reply.lines.join(' | '));
      t.diagnostic(`452 after ${Date.now() - filled} ms`);
      // The session is not dropped: a later MAIL may succeed when space returns.
      await c.ok('NOOP', 250);
    } finally {
      c.close();
      c = null;
    }
    const low = await p.waitLog((l) => l.event === 'disk-low', 1000);
    assert.ok((low.free_bytes as number) < MiB);
  });

  test('while the disk is low, the messages queued before are listed and intact', async () => {
    const list = await p.cli(['queue', 'list', '--json']);
    assert.equal(list.code, 0, list.stderr);
    const listed = JSON.parse(list.stdout) as { id: string; recipients: { address: string; state: string }[] }[];
    assert.deepEqual(listed.map((m) => m.id).sort(), [...ids].sort(), list.stdout);
    for (const m of listed) assert.equal(m.recipients[0]!.state, 'deferred', list.stdout);
    for (const [i, id] of ids.entries()) {
      const q = await readQueued(p.spool, id);
      assert.ok(q.message.toString('latin1').endsWith(message(i === 0 ? 'disk-a' : 'disk-b')));
    }
  });

  test('while the disk is low, delivery goes on: the queued messages reach the peer once it accepts', async () => {
    peer.script.tempfailRcpt = 0;
    const got = await peer.waitMessages(2, 15_000);
    const bodies = got.map((m) => m.data.toString('latin1'));
    for (const name of ['disk-a', 'disk-b']) assert.ok(bodies.some((b) => b.includes(`<${name}@client.test>`)), name);
    await waitFor('an empty queue', () => (queuedIds(p.spool).length === 0 ? true : undefined), 10_000);
  });

  test('with the filler removed, MAIL is accepted again and the new message is delivered', async () => {
    rmSync(filler());
    await p.waitLog((l) => l.event === 'disk-ok', 5000);
    const r = await waitFor('250 after the space returned', async () => {
      const s = await send(p.port, 'disk-c@remote.test', message('disk-c'));
      return s.code === '250 2.0.0' ? s : undefined;
    }, 5000);
    assert.ok(r.qid);
    const got = await peer.waitMessages(3, 15_000);
    assert.ok(got.some((m) => m.data.toString('latin1').includes('<disk-c@client.test>')));
  });
});

describe('ENOSPC in the middle of a message (min_free_space = 0)', { skip: SKIP }, () => {
  let fs: ReturnType<typeof tmpfsDir>;
  let p: Running;
  before(async () => {
    fs = tmpfsDir('16m');
    p = await startPalisade({ dir: fs.dir, workers: 1, toml: KEEP_QUEUED.replace('[queue]\n', '[queue]\nmin_free_space = 0\n') });
  });
  after(async () => {
    try {
      await p?.stop();
    } finally {
      fs.cleanup();
    }
  });

  test('a message larger than the space left gets 451 4.3.0 (or 452), leaves no partial file, and earlier mail stays intact', async (t) => {
    const earlier = await send(p.port, 'user@mx.test', message('before-enospc'));
    assert.equal(earlier.code, '250 2.0.0');
    const filler = join(fs.dataDir, 'filler');
    writeFileSync(filler, Buffer.alloc(freeBytes(fs.dataDir) - 256 * 1024));
    t.diagnostic(`free before the big message: ${Math.round(freeBytes(fs.dataDir) / 1024)} KiB`);
    // 1 MiB of body: four times what is left.
    const line = 'x'.repeat(1022) + '\r\n';
    const big = Buffer.from('Subject: too big for the disk\r\n\r\n' + line.repeat(1024));
    const r = await send(p.port, 'user@mx.test', big);
    assert.ok(['451 4.3.0', '452 4.3.1'].includes(r.code), `got ${r.code}`);
    await waitFor('no partial file (tmp/ or a reserved file)', () => (partialFiles(p.spool).length === 0 ? true : undefined), 5000);
    assert.deepEqual(spoolFiles(p.spool, 'incoming'), []);
    assert.deepEqual(queuedIds(p.spool), [earlier.qid]);
    const q = await readQueued(p.spool, earlier.qid!);
    assert.ok(q.message.toString('latin1').endsWith(message('before-enospc')));
    await p.waitLog((l) => l.event === 'write-error' && String(l.err).includes('ENOSPC'), 5000); // cleanup logs the ENOSPC
    // The space is returned with the partial file, so a small message fits again at once.
    rmSync(filler);
    const after = await send(p.port, 'user@mx.test', message('after-enospc'));
    assert.equal(after.code, '250 2.0.0');
  });
});

describe('a full disk while qmgr appends a state record (min_free_space = 0)', { skip: SKIP }, () => {
  let fs: ReturnType<typeof tmpfsDir>;
  let peer: SmtpPeer;
  let p: Running;
  before(async () => {
    fs = tmpfsDir('16m');
    peer = await startSmtpPeer({ tempfailRcpt: 1_000_000 });
    p = await startPalisade({
      dir: fs.dir,
      workers: 1,
      toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n` +
        '[queue]\nmin_free_space = 0\nretry_min = "1s"\nretry_max = "1s"\nscan_interval = "200ms"\n' +
        '[delivery]\nworkers = 1\nconnect_timeout = "2s"\ntimeout = "5s"\n',
    });
  });
  after(async () => {
    try {
      await p?.stop();
      await peer?.close();
    } finally {
      fs.cleanup();
    }
  });

  test('a record torn by the full disk does not make the message corrupt once space returns: it is still delivered', async (t) => {
    // Padded so the file nears its first page boundary after a round or two (a round adds ~260 bytes).
    const r = await send(p.port, 'torn@remote.test', message('torn') + `${'p'.repeat(70)}\r\n`.repeat(40));
    assert.equal(r.code, '250 2.0.0');
    const qid = r.qid!;
    const size = () => {
      for (const d of ['incoming', 'deferred', 'active']) {
        try {
          return statSync(join(p.spool, d, qid)).size;
        } catch { /* moved meanwhile */ }
      }
      return -1;
    };
    // Each deferred round appends records to the file. Wait until the next round's records must cross a page
    // boundary, then take every free page: tmpfs writes what fits in the current page and returns short.
    let last = size();
    let growth = 0;
    const filler = join(fs.dataDir, 'filler');
    await waitFor('a round about to cross a page boundary', () => {
      const s = size();
      if (last === -1) last = s;
      else if (s > last) {
        growth = s - last;
        last = s;
        const room = 4096 - (s % 4096);
        if (room < growth && room > 40) return true;
      }
      return undefined;
    }, 60_000);
    fillCompletely(filler);
    const before = size();
    t.diagnostic(`file ${before} bytes, ${4096 - (before % 4096)} left in its last page, a round adds ${growth}`);
    // The append runs out of space: a torn record at the page end, or (refused and taken back) a qmgr-error.
    await waitFor('an append on the full disk', () => (size() % 4096 === 0 || p.logs().some((l) => l.event === 'qmgr-error' && l.qid === qid) ? true : undefined), 5000);
    await sleep(1500); // another round on the full disk
    rmSync(filler);
    // One more deferred round on a healthy disk appends after the torn record; then the peer accepts.
    const deferralsBefore = p.logs().filter((l) => l.event === 'delivery' && l.qid === qid && l.status === 'deferred').length;
    const corrupt = () => spoolFiles(p.spool, 'corrupt').length > 0;
    await waitFor('two deferrals after the space returned', () => (corrupt() || p.logs().filter((l) => l.event === 'delivery' && l.qid === qid && l.status === 'deferred').length > deferralsBefore + 1 ? true : undefined), 10_000);
    assert.deepEqual(spoolFiles(p.spool, 'corrupt'), [], 'the file stays readable after the append that follows');
    peer.script.tempfailRcpt = 0;
    await waitFor('delivery or corruption', () => (peer.messages.length > 0 || spoolFiles(p.spool, 'corrupt').length > 0 ? true : undefined), 15_000);
    assert.deepEqual(spoolFiles(p.spool, 'corrupt'), [], 'nothing in corrupt/');
    assert.equal(peer.messages.length, 1);
  });
});

/** Writes `path` until the file system has not a byte left. */
function fillCompletely(path: string): void {
  const fd = openSync(path, 'w');
  try {
    for (const chunk of [65536, 4096, 1]) {
      const buf = Buffer.alloc(chunk);
      for (;;) {
        try {
          if (writeSync(fd, buf) < chunk) break;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw e;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
