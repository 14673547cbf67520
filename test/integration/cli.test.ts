// SPDX-License-Identifier: MIT
// The palisade command as operators and scripts see it: exit codes of the contract (0, 1, 64, 69, 75, 78),
// messages that name the problem, and stop through the control socket.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configText, runCli, runStart, startPalisade, type Running } from '../support/palisade.ts';
import { KEEP_QUEUED } from '../support/queue.ts';

/** A fresh directory with a config written by `configText`, removed by the returned cleanup. */
function scratch(extra = ''): { dir: string; config: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-cli-'));
  const config = join(dir, 'palisade.toml');
  writeFileSync(config, configText(dir) + extra);
  return { dir, config, done: () => rmSync(dir, { recursive: true, force: true }) };
}

describe('palisade CLI against a running instance', () => {
  let p: Running;
  before(async () => {
    p = await startPalisade({ workers: 1, toml: KEEP_QUEUED });
  });
  after(async () => {
    await p.stop();
  });

  test('"queue show" of an unknown ID exits 1 and says so', async () => {
    for (const id of ['UNKNOWNID', '01M8FVDXP16T8S2B']) {
      const r = await p.cli(['queue', 'show', id]);
      assert.equal(r.code, 1, `queue show ${id}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(id));
      assert.equal(r.stdout, '');
    }
  });

  test('"queue list" of an empty queue exits 0 and "--json" prints []', async () => {
    const text = await p.cli(['queue', 'list']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /empty/i);
    const json = await p.cli(['queue', 'list', '--json']);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), []);
  });

  test('an unknown command exits 64 with usage', async () => {
    const r = await p.cli(['frobnicate']);
    assert.equal(r.code, 64);
    assert.match(r.stderr, /frobnicate/);
    assert.match(r.stderr, /usage/i);
  });

  // libuv defers EADDRINUSE from bind() to listen(): master must notice the unbound socket itself.
  test('a second instance on a port already taken exits 69 and names the listener', async () => {
    const s = scratch();
    try {
      const taken = `127.0.0.1:${p.port}`;
      writeFileSync(s.config, configText(s.dir, { listen: [taken] }));
      const r = await runStart(s.config, s.dir);
      assert.equal(r.killed, false, `it started instead of refusing: ${r.stdout.split('\n').find((l) => l.includes('"ready"')) ?? r.stdout.slice(-300)}`);
      assert.equal(r.code, 69, r.stderr);
      assert.ok(r.stderr.includes(taken), `stderr names ${taken}: ${r.stderr}`);
      assert.ok(!existsSync(join(s.dir, 'var', 'palisade.pid')), 'no pid file is left behind');
    } finally {
      s.done();
    }
  });

  test('a second instance on the same data_dir exits 69 while the first runs', async () => {
    const r = await runStart(p.config, p.dir);
    assert.equal(r.killed, false, `it started instead of refusing: ${r.stdout.split('\n').find((l) => l.includes('"ready"')) ?? r.stdout.slice(-300)}`);
    assert.equal(r.code, 69, r.stderr);
    assert.match(r.stderr, /already running/i);
    // The first one is untouched.
    const list = await p.cli(['queue', 'list', '--json']);
    assert.equal(list.code, 0);
    assert.ok(existsSync(join(p.dir, 'var', 'palisade.pid')));
  });

  test('a second instance on the same spool exits 69 even when the first one\'s pid file is gone', async () => {
    const pid = join(p.dir, 'var', 'palisade.pid');
    const saved = readFileSync(pid);
    rmSync(pid);
    try {
      const r = await runStart(p.config, p.dir);
      assert.equal(r.killed, false, `it started instead of refusing: ${r.stdout.split('\n').find((l) => l.includes('"ready"')) ?? r.stdout.slice(-300)}`);
      assert.equal(r.code, 69, r.stderr);
      assert.match(r.stderr, /already running on the spool/i);
    } finally {
      writeFileSync(pid, saved);
    }
    const list = await p.cli(['queue', 'list', '--json']);
    assert.equal(list.code, 0);
  });

  // Last in this group: it stops the shared instance.
  test('"palisade stop --config" stops the running master, which exits 0 and removes its pid file and control socket', async () => {
    const r = await p.cli(['stop']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await p.exited(), 0);
    assert.ok(!existsSync(join(p.dir, 'var', 'palisade.pid')), 'pid file removed');
    assert.ok(!existsSync(join(p.spool, 'private', 'control')), 'control socket removed');
    // Stopped means stopped: a second stop finds nothing to talk to.
    const again = await p.cli(['stop']);
    assert.equal(again.code, 75, again.stderr);
  });
});

describe('palisade stop and reload without Palisade', () => {
  test('"palisade stop" and "palisade reload" exit 75 when Palisade is not running', async () => {
    const s = scratch();
    try {
      for (const cmd of ['stop', 'reload']) {
        const r = await runCli([cmd], s.config, s.dir);
        assert.equal(r.code, 75, `${cmd}: ${r.stderr}`);
        assert.match(r.stderr, /not running/i);
      }
    } finally {
      s.done();
    }
  });
});

describe('palisade check-config', () => {
  test('a valid config exits 0 and prints the effective configuration', async () => {
    const s = scratch();
    try {
      const r = await runCli(['check-config'], s.config, s.dir);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /hostname = "mx\.test"/);
      assert.match(r.stdout, /max_message_size = 10240000/);
    } finally {
      s.done();
    }
  });

  test('an unknown key exits 78 and the message names the key and its line', async () => {
    const s = scratch();
    try {
      writeFileSync(s.config, '[smtp]\nmax_sessions = 10\nmax_sesions_per_ip = 3\n');
      const r = await runCli(['check-config'], s.config, s.dir);
      assert.equal(r.code, 78, r.stderr);
      assert.match(r.stderr, /smtp\.max_sesions_per_ip/);
      assert.match(r.stderr, /:3:/);
    } finally {
      s.done();
    }
  });

  test('a wrong type and a bad value exit 78 naming the key', async () => {
    const s = scratch();
    try {
      for (const [text, key] of [
        ['[smtp]\nmax_recipients = "many"\n', 'smtp.max_recipients'],
        ['[smtp]\ntimeout = "soon"\n', 'smtp.timeout'],
        ['[relay]\ntrusted_networks = ["not-a-net"]\n', 'relay.trusted_networks'],
      ] as const) {
        writeFileSync(s.config, text);
        const r = await runCli(['check-config'], s.config, s.dir);
        assert.equal(r.code, 78, `${key}: ${r.stderr}`);
        assert.ok(r.stderr.includes(key), `stderr names ${key}: ${r.stderr}`);
      }
    } finally {
      s.done();
    }
  });

  test('"palisade start" with an unknown key exits 78 without starting anything', async () => {
    const s = scratch();
    try {
      writeFileSync(s.config, configText(s.dir, { smtp: 'no_such_key = 1' }));
      const r = await runStart(s.config, s.dir);
      assert.equal(r.killed, false, 'it started instead of refusing');
      assert.equal(r.code, 78, r.stderr);
      assert.match(r.stderr, /smtp\.no_such_key/);
      assert.ok(!r.stdout.includes('"ready"'));
    } finally {
      s.done();
    }
  });
});
