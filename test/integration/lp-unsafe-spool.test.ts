// SPDX-License-Identifier: MIT
// Spool safety at start: a data_dir or spool anyone may write to lets another local user plant or steal mail,
// so `palisade start` refuses it with exit 78 and names the path (docs/security.md).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configText, runStart } from '../support/palisade.ts';

/** A fresh test directory with the harness config; `prepare` shapes var/ before the start. */
function setup(prepare: (dataDir: string) => void): { dir: string; config: string; dataDir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-lp-unsafe-'));
  const config = join(dir, 'palisade.toml');
  writeFileSync(config, configText(dir));
  const dataDir = join(dir, 'var');
  prepare(dataDir);
  return { dir, config, dataDir };
}

test('a world-writable data_dir stops palisade start with exit 78, a message naming the path, and nothing started', async () => {
  const { dir, config, dataDir } = setup((d) => {
    mkdirSync(d);
    chmodSync(d, 0o777); // chmod, not mkdir's mode: the umask would clear o+w
  });
  try {
    const r = await runStart(config, dir);
    assert.equal(r.killed, false, `palisade did not stop by itself; stdout: ${r.stdout.slice(-500)}`);
    assert.equal(r.code, 78, r.stderr);
    assert.ok(r.stderr.includes(dataDir), `stderr names ${dataDir}: ${r.stderr}`);
    assert.match(r.stderr, /world-writable/);
    assert.doesNotMatch(r.stdout, /"event":"ready"/);
    assert.equal(existsSync(join(dataDir, 'palisade.pid')), false, 'no pid file');
    assert.equal(existsSync(join(dataDir, 'spool')), false, 'no spool created inside the unsafe directory');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a world-writable spool (data_dir itself fine) stops palisade start with exit 78 naming the spool', async () => {
  const { dir, config, dataDir } = setup((d) => {
    mkdirSync(join(d, 'spool'), { recursive: true });
    chmodSync(d, 0o755);
    chmodSync(join(d, 'spool'), 0o1777); // the sticky bit does not make it safe for a spool
  });
  try {
    const r = await runStart(config, dir);
    assert.equal(r.killed, false, `palisade did not stop by itself; stdout: ${r.stdout.slice(-500)}`);
    assert.equal(r.code, 78, r.stderr);
    assert.ok(r.stderr.includes(join(dataDir, 'spool')), `stderr names the spool: ${r.stderr}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
