// SPDX-License-Identifier: MIT
// Reload under load: `palisade reload` and SIGHUP re-read the config while 5 sessions keep sending; no session
// sees an error reply or a reset, every acknowledged message is delivered, and the new config applies to new
// sessions. A broken config is refused (the CLI exits 78; master logs reload-failed) and the old one stays.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { childProcesses, startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { SmtpClient, openSession } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { queuedIds } from '../support/queue.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The SIZE a new session is offered in its EHLO reply. */
async function advertisedSize(port: number): Promise<number> {
  const c = await SmtpClient.connect(port);
  try {
    await c.expect(220);
    const r = await c.ok('EHLO client.test');
    const m = /^SIZE (\d+)$/m.exec(r.text);
    assert.ok(m !== null, r.text);
    return Number(m[1]);
  } finally {
    c.close();
  }
}

/** Sends messages on one long session until `stop()`; any reply but the expected one, or a close, is a failure. */
async function steadySender(port: number, n: number, stop: () => boolean, acked: Set<string>, failures: string[]): Promise<void> {
  let c: SmtpClient;
  try {
    c = await openSession(port);
  } catch (e) {
    failures.push(`sender ${n}: could not open a session: ${(e as Error).message}`);
    return;
  }
  try {
    for (let seq = 0; !stop(); seq++) {
      const id = `reload-${n}-${seq}@client.test`;
      const steps: [string, number][] = [['MAIL FROM:<a@example.com>', 250], [`RCPT TO:<r${n}@remote.test>`, 250], ['DATA', 354]];
      for (const [line, code] of steps) {
        const r = await c.cmd(line);
        if (r.code !== code) throw new Error(`${line} → ${r.lines.join(' | ')}`);
      }
      c.write(`Message-ID: <${id}>\r\nSubject: ${id}\r\n\r\nsteady\r\n.\r\n`);
      const r = await c.read(15_000);
      if (r === null) throw new Error('closed after DATA');
      if (r.code !== 250) throw new Error(`end of DATA → ${r.lines.join(' | ')}`);
      acked.add(id);
      await sleep(50);
    }
    const q = await c.cmd('QUIT');
    if (q.code !== 221) throw new Error(`QUIT → ${q.lines.join(' | ')}`);
  } catch (e) {
    failures.push(`sender ${n}: ${(e as Error).message}`);
  } finally {
    c.close();
  }
}

describe('reload while 5 sessions send', () => {
  let peer: SmtpPeer;
  let p: Running;
  let original: string;
  before(async () => {
    peer = await startSmtpPeer();
    p = await startPalisade({
      workers: 2,
      smtp: 'max_message_size = 1000000',
      toml: `[transport]\n"*" = "smtp:[127.0.0.1]:${peer.port}"\n[queue]\nretry_min = "1s"\nretry_max = "2s"\nscan_interval = "500ms"\n` +
        '[delivery]\nworkers = 1\nconnect_timeout = "2s"\ntimeout = "5s"\n',
    });
    original = readFileSync(p.config, 'utf8');
  });
  after(async () => {
    try {
      assert.equal(await p.stop(), 0);
    } finally {
      await peer.close();
    }
  });

  /** Runs 5 steady senders around `during()`; returns what they saw. */
  async function underLoad(during: () => Promise<void>): Promise<{ acked: Set<string>; failures: string[] }> {
    let stopping = false;
    const acked = new Set<string>();
    const failures: string[] = [];
    const senders = Array.from({ length: 5 }, (_, n) => steadySender(p.port, n, () => stopping, acked, failures));
    try {
      await sleep(500);
      await during();
      await sleep(1000);
    } finally {
      stopping = true;
      await Promise.all(senders);
    }
    return { acked, failures };
  }

  /** Waits until every acked Message-ID has reached the peer and the queue is empty. */
  async function allDelivered(acked: Set<string>): Promise<void> {
    await waitFor('every acked message at the peer', () => {
      const got = new Set(peer.messages.map((m) => /^Message-ID: <([^>]+)>\r$/m.exec(m.data.toString('latin1'))?.[1]));
      return [...acked].every((id) => got.has(id)) && queuedIds(p.spool).length === 0 ? true : undefined;
    }, 20_000);
  }

  test('palisade reload (twice) keeps every session going, delivers every acked message, and applies the new config', async (t) => {
    assert.equal(await advertisedSize(p.port), 1000000);
    writeFileSync(p.config, original.replace('max_message_size = 1000000', 'max_message_size = 2000000'));
    const { acked, failures } = await underLoad(async () => {
      for (let i = 0; i < 2; i++) {
        const r = await p.cli(['reload']);
        assert.equal(r.code, 0, r.stderr);
        await sleep(700);
      }
    });
    t.diagnostic(`acked ${acked.size} during two reloads`);
    assert.deepEqual(failures, []);
    assert.ok(acked.size >= 10, `mail flowed (${acked.size})`);
    await waitFor('two reloaded lines', () => (p.logs().filter((l) => l.event === 'reloaded').length === 2 ? true : undefined), 5000);
    assert.equal(await advertisedSize(p.port), 2000000, 'new sessions get the reloaded config');
    await allDelivered(acked);
  });

  test('SIGHUP reloads too, under the same load, with no error and no reset', async () => {
    const before = p.logs().filter((l) => l.event === 'reloaded').length;
    writeFileSync(p.config, original.replace('max_message_size = 1000000', 'max_message_size = 3000000'));
    const { acked, failures } = await underLoad(async () => {
      p.proc.kill('SIGHUP');
      await waitFor('the reloaded line', () => (p.logs().filter((l) => l.event === 'reloaded').length > before ? true : undefined), 10_000);
    });
    assert.deepEqual(failures, []);
    assert.equal(await advertisedSize(p.port), 3000000);
    await allDelivered(acked);
  });

  test('a session from before a reload outlives drain_timeout on its old worker, which exits once the client quits', async () => {
    const smtpds = () => childProcesses(p.proc.pid!).filter((c) => c.args.endsWith(' child smtpd')).map((c) => c.pid);
    await waitFor('2 smtpd workers', () => (smtpds().length === 2 ? true : undefined), 10_000);
    const c = await openSession(p.port);
    try {
      const r = await p.cli(['reload']);
      assert.equal(r.code, 0, r.stderr);
      await sleep(2500); // drain_timeout is 2 s in the harness: a drain would have cut the session by now
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<late@remote.test>');
      await c.ok('DATA', 354);
      c.write('Message-ID: <reload-late@client.test>\r\n\r\nfrom an old worker\r\n.\r\n');
      await c.expect(250, '2.0.0');
      assert.equal(smtpds().length, 3, 'two new workers and the old one still serving this session');
      await c.ok('QUIT', 221);
    } finally {
      c.close();
    }
    await waitFor('the old worker to exit', () => (smtpds().length === 2 ? true : undefined), 10_000);
    await allDelivered(new Set(['reload-late@client.test']));
  });

  test('a broken config is refused: the CLI exits 78 naming the key, a SIGHUP leaves the old config running', async () => {
    writeFileSync(p.config, original.replace('[smtp]\n', '[smtp]\nno_such_key = 1\n'));
    const r = await p.cli(['reload']);
    assert.equal(r.code, 78);
    assert.match(r.stderr, /no_such_key/);
    // The CLI refuses before asking master; master must refuse a broken file on its own as well.
    const failedBefore = p.logs().filter((l) => l.event === 'reload-failed').length;
    const { acked, failures } = await underLoad(async () => {
      p.proc.kill('SIGHUP');
      await waitFor('reload-failed', () => (p.logs().filter((l) => l.event === 'reload-failed').length > failedBefore ? true : undefined), 10_000);
    });
    const failed = p.logs().filter((l) => l.event === 'reload-failed').at(-1)!;
    assert.match(String(failed.err), /no_such_key/);
    assert.deepEqual(failures, []);
    assert.equal(p.proc.exitCode, null, 'Palisade keeps running');
    assert.equal(await advertisedSize(p.port), 3000000, 'the running config stays');
    await allDelivered(acked);
    writeFileSync(p.config, original);
  });

  // Last: it stops this instance.
  test('SIGTERM after a reload drains the old worker\'s sessions as well: 421 4.3.2, then exit 0', async () => {
    const c = await openSession(p.port);
    try {
      const r = await p.cli(['reload']);
      assert.equal(r.code, 0, r.stderr);
      await c.ok('NOOP', 250);
      const started = Date.now();
      p.proc.kill('SIGTERM');
      await c.expect(421, '4.3.2');
      assert.equal(await p.exited(), 0);
      assert.ok(Date.now() - started < 10_000, 'within drain_timeout and the kill margin');
    } finally {
      c.close();
    }
  });
});
