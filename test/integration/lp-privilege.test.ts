// SPDX-License-Identifier: MIT
// Least privilege, observed from outside: started as root, every child runs as its service user under Node's
// permission model with per-role grants, and the spool has the modes of docs/security.md. Isolation is proven
// the way ARCHITECTURE.md says: a child's exact argv (from /proc) is run again under the child's uid/gid
// (setpriv) with a probe script as the entry, and shows what it can and cannot open.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { ROOT, childProcesses, startPalisade, waitFor, type Running } from '../support/palisade.ts';
import { openSession, queueIdOf } from '../support/smtp-client.ts';
import { waitMaildir } from '../support/mailbox.ts';
import { spoolFiles } from '../support/queue.ts';

const IS_ROOT = process.getuid?.() === 0;
const SETPRIV = '/usr/bin/setpriv';

/** uid/gid of a user from /etc/passwd and of a group from /etc/group. */
function passwdIds(user: string): { uid: number; gid: number } {
  const f = readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':')).find((x) => x[0] === user);
  assert.ok(f !== undefined, `user ${user} exists`);
  return { uid: Number(f[2]), gid: Number(f[3]) };
}
function groupId(name: string): number {
  const f = readFileSync('/etc/group', 'utf8').split('\n').map((l) => l.split(':')).find((x) => x[0] === name);
  assert.ok(f !== undefined, `group ${name} exists`);
  return Number(f[2]);
}

/** The Uid:, Gid: and Groups: lines of /proc/<pid>/status as numbers (real, effective, saved, fs). */
function procIds(pid: number): { uid: number[]; gid: number[]; groups: number[] } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => (new RegExp(`^${name}:\\t?(.*)$`, 'm').exec(status)?.[1] ?? '').trim().split(/\s+/).filter((x) => x !== '').map(Number);
  return { uid: field('Uid'), gid: field('Gid'), groups: field('Groups') };
}

/** A child's argv exactly as the kernel has it. */
function procArgv(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1);
}

/** The --allow-fs-read / --allow-fs-write paths in an argv. */
function grantsOf(argv: readonly string[]): { read: string[]; write: string[] } {
  const pick = (flag: string) => argv.filter((a) => a.startsWith(`${flag}=`)).map((a) => a.slice(flag.length + 1));
  return { read: pick('--allow-fs-read'), write: pick('--allow-fs-write') };
}

/** Master's children by role (the last word of `... src/main.ts child <role>`). */
function childrenByRole(p: Running): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const c of childProcesses(p.proc.pid!)) {
    const m = / child (\w+)$/.exec(c.args);
    if (m === null) continue;
    out.set(m[1]!, [...(out.get(m[1]!) ?? []), c.pid]);
  }
  return out;
}

// The probe: tries each operation given on its command line and prints what happened, as JSON.
// "read:PATH" reads a file, "list:PATH" lists a directory; the result is "ok" or the error code.
const PROBE = `
import { readFileSync, readdirSync } from 'node:fs';
const out = {};
for (const op of process.argv.slice(2)) {
  const i = op.indexOf(':');
  const [what, path] = [op.slice(0, i), op.slice(i + 1)];
  try {
    if (what === 'read') out[op] = readFileSync(path, 'latin1').includes('Message-ID: <lp-queued@client.test>') ? 'ok:message' : 'ok';
    else out[op] = (readdirSync(path), 'ok');
  } catch (e) {
    out[op] = e.code ?? e.message;
  }
}
process.stdout.write(JSON.stringify(out));
`;

// Every file under `root` with its size, mode and modification time.
function snapshot(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const n of readdirSync(d).sort()) {
      const path = join(d, n);
      const st = statSync(path);
      out.push(`${path} ${st.size} ${(st.mode & 0o7777).toString(8)} ${st.uid} ${st.mtimeMs}`);
      if (st.isDirectory()) walk(path);
    }
  };
  walk(root);
  return out;
}

describe('least privilege as root', { skip: IS_ROOT ? false : 'needs root (CI runs as root)' }, () => {
  let sharedBefore: string[] | null = null;
  let dir: string;
  let probeDir: string;
  let probe: string;
  let p: Running;
  let queuedId: string;
  let queuedFile: string;
  before(async () => {
    // The children read the code as the service users: a checkout they cannot reach (say under a 0700 /root)
    // fails every start, so say so plainly.
    for (let d = ROOT; d !== dirname(d); d = dirname(d)) {
      assert.ok((statSync(d).mode & 0o001) !== 0, `${d} must be searchable by other users for the service users to read the code`);
    }
    // The service users must traverse the test directory to reach the spool (mkdtemp makes it 0700).
    dir = mkdtempSync(join(tmpdir(), 'palisade-lp-priv-'));
    chmodSync(dir, 0o755);
    probeDir = mkdtempSync(join(tmpdir(), 'palisade-lp-probe-'));
    chmodSync(probeDir, 0o755);
    probe = join(probeDir, 'probe.mjs');
    writeFileSync(probe, PROBE, { mode: 0o644 });
    p = await startPalisade({
      dir,
      dropPrivileges: true,
      workers: 1,
      server: 'user = "palisade"\nsmtpd_user = "palisade-smtpd"',
      // parked.test goes to a port where nothing listens: its message stays queued (deferred) for the probes.
      toml: '[transport]\n"parked.test" = "smtp:[127.0.0.1]:9"\n[queue]\nretry_min = "1h"\nretry_max = "1h"\n[delivery]\nworkers = 1\nconnect_timeout = "2s"\n',
    });
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<someone@parked.test>');
      await c.ok('DATA', 354);
      c.write('Message-ID: <lp-queued@client.test>\r\nSubject: parked\r\n\r\nstays in the queue\r\n.\r\n');
      queuedId = queueIdOf(await c.expect(250, '2.0.0'));
    } finally {
      c.close();
    }
    await waitFor('the parked message in deferred/', () => (spoolFiles(p.spool, 'deferred').includes(queuedId) ? true : undefined), 15_000);
    queuedFile = join(p.spool, 'deferred', queuedId);
  });
  after(async () => {
    try {
      if (p !== undefined) assert.equal(await p.stop(), 0);
      // The children have exited (Node writes its cache back then): the shared copies are as master made them.
      if (sharedBefore !== null) assert.deepEqual(snapshot(join(dir, 'var/compile-cache/shared')), sharedBefore, 'no child changed a shared copy');
    } finally {
      rmSync(dir, { recursive: true, force: true });
      rmSync(probeDir, { recursive: true, force: true });
    }
  });

  /** Runs node with `argv[1..]` up to the entry, then the probe and `ops`, as uid/gid (no supplementary groups). */
  function runProbe(flags: readonly string[], ids: { uid: number; gid: number }, ops: readonly string[]): Record<string, string> {
    const node = process.execPath;
    const r = spawnSync(SETPRIV, [`--reuid=${ids.uid}`, `--regid=${ids.gid}`, '--clear-groups', '--', node, ...flags, probe, ...ops], {
      cwd: probeDir,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' },
      encoding: 'utf8',
      timeout: 15_000,
    });
    assert.equal(r.status, 0, `probe failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as Record<string, string>;
  }

  /** A child's node flags (argv between the binary and the entry), plus read access to the probe alone. */
  function flagsOf(pid: number): string[] {
    const argv = procArgv(pid);
    const entry = argv.indexOf(join(ROOT, 'src/main.ts'));
    assert.ok(entry > 0, `entry in ${argv.join(' ')}`);
    assert.equal(argv[0], process.execPath, 'children run the project\'s own node');
    return [...argv.slice(1, entry), `--allow-fs-read=${probe}`];
  }

  test('smtpd runs as palisade-smtpd and cleanup, qmgr and delivery as palisade, all with group palisade and no other group', () => {
    const roles = childrenByRole(p);
    const user = passwdIds('palisade').uid;
    const smtpd = passwdIds('palisade-smtpd').uid;
    const group = groupId('palisade');
    assert.notEqual(user, smtpd);
    assert.deepEqual([...roles.keys()].sort(), ['cleanup', 'delivery', 'qmgr', 'smtpd']);
    for (const [role, pids] of roles) {
      const want = role === 'smtpd' ? smtpd : user;
      for (const pid of pids) {
        const ids = procIds(pid);
        assert.deepEqual(ids.uid, [want, want, want, want], `${role} ${pid} Uid`);
        assert.deepEqual(ids.gid, [group, group, group, group], `${role} ${pid} Gid`);
        assert.deepEqual(ids.groups, [], `${role} ${pid} has no supplementary groups (root's are dropped)`);
      }
    }
    assert.equal(procIds(p.proc.pid!).uid[0], 0, 'master stays root (it binds the ports)');
  });

  test('every child runs with --permission and its role\'s exact grants; smtpd is granted no spool path and no write', () => {
    const spool = p.spool;
    const mail = join(dir, 'var/mail');
    const code = [join(ROOT, 'src'), join(ROOT, 'node_modules'), join(ROOT, 'package.json')];
    const want: Record<string, { read: string[]; write: string[] }> = {
      smtpd: { read: code, write: [] },
      cleanup: { read: [...code, spool], write: [spool] },
      qmgr: { read: [...code, spool], write: [spool] },
      delivery: { read: [...code, spool, mail, '/etc/resolv.conf'], write: [mail, join(spool, 'active')] },
    };
    for (const [role, pids] of childrenByRole(p)) {
      for (const pid of pids) {
        // What an operator sees in ps is what the kernel has.
        const args = execFileSync('ps', ['-o', 'args=', '-p', String(pid)], { encoding: 'utf8' }).trim();
        assert.equal(args, procArgv(pid).join(' '), `${role}: ps shows the full argv (no process.title)`);
        const argv = procArgv(pid);
        assert.ok(argv.includes('--permission'), `${role}: --permission`);
        assert.ok(argv.includes('--no-experimental-sqlite'), `${role}: node:sqlite off (it writes files past the model)`);
        for (const a of argv) assert.doesNotMatch(a, /^--allow-(child-process|worker|addons|wasi|inspector)/, `${role}: ${a}`);
        const g = grantsOf(argv);
        // Besides its role's grants, the compile cache for its user: master's copy, which it may read, not change.
        const cache = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').find((kv) => kv.startsWith('NODE_COMPILE_CACHE='))?.slice(19);
        assert.equal(cache, join(dir, 'var/compile-cache/shared'), `${role}: the shared read-only cache`);
        const mine = readdirSync(cache).find((n) => n.endsWith(`-${procIds(pid).uid[0]}`));
        assert.ok(mine !== undefined, `${role}: a copy named for its user`);
        for (const path of [cache, join(cache, mine), ...readdirSync(join(cache, mine)).map((n) => join(cache, mine, n))]) {
          const st = statSync(path);
          assert.equal(st.uid, 0, `${path} is master's`);
          assert.equal(st.mode & 0o022, 0, `${path} is writable by nobody else`);
        }
        // Granted its user's copy only, not the others in shared/.
        assert.deepEqual(g.read.sort(), [...want[role]!.read, join(cache, mine)].sort(), `${role} reads`);
        assert.deepEqual(g.write.sort(), [...want[role]!.write, join(cache, mine)].sort(), `${role} writes`);
        for (const path of [...g.read, ...g.write]) assert.ok(!path.includes('*') && path.startsWith('/'), `${role}: exact path ${path}`);
      }
    }
    const smtpd = grantsOf(procArgv(childrenByRole(p).get('smtpd')![0]!));
    for (const path of smtpd.read) {
      assert.ok(path !== spool && !path.startsWith(spool + '/') && !spool.startsWith(path + '/'), `smtpd grant ${path} is not the spool, inside it, or a parent of it`);
    }
  });

  test('the pristine compile cache is master\'s alone, the shared copies master\'s and readable', () => {
    const root = join(dir, 'var/compile-cache');
    assert.equal(statSync(join(root, 'pristine')).mode & 0o777, 0o700);
    assert.equal(statSync(join(root, 'pristine')).uid, 0);
    assert.equal(statSync(root).mode & 0o777, 0o711, 'others may pass through, not list');
    const users = [passwdIds('palisade').uid, passwdIds('palisade-smtpd').uid];
    const copies = readdirSync(join(root, 'shared')).map((n) => Number(/-(\d+)$/.exec(n)![1])).sort();
    assert.deepEqual(copies, [...users].sort(), 'one read-only copy per service user');
    sharedBefore = snapshot(join(root, 'shared'));
  });

  test('children get an explicit minimal environment, nothing of the caller\'s', () => {
    for (const [role, pids] of childrenByRole(p)) {
      for (const pid of pids) {
        const names = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter((x) => x !== '').map((kv) => kv.slice(0, kv.indexOf('=')));
        // NODE_CHANNEL_* is the fork channel itself (added by Node).
        for (const n of names) assert.ok(['PATH', 'LANG', 'TZ', 'UV_THREADPOOL_SIZE', 'NODE_COMPILE_CACHE'].includes(n) || n.startsWith('NODE_CHANNEL_'), `${role} ${pid} has ${n}`);
      }
    }
  });

  test('the spool root is 0710 palisade:palisade, the state directories 0700 palisade, private/cleanup 0660 and control 0600 root', () => {
    const user = passwdIds('palisade').uid;
    const group = groupId('palisade');
    const mode = (path: string) => {
      const st = statSync(path);
      return { mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
    };
    assert.deepEqual(mode(p.spool), { mode: '710', uid: user, gid: group });
    for (const d of ['tmp', 'incoming', 'active', 'deferred', 'hold', 'corrupt']) {
      assert.deepEqual({ ...mode(join(p.spool, d)), gid: undefined }, { mode: '700', uid: user, gid: undefined }, d);
    }
    assert.deepEqual(mode(join(p.spool, 'private')), { mode: '710', uid: user, gid: group });
    assert.deepEqual(mode(join(p.spool, 'private/cleanup')), { mode: '660', uid: user, gid: group });
    assert.deepEqual(mode(join(p.spool, 'private/delivery')), { mode: '600', uid: user, gid: group });
    assert.deepEqual(mode(join(p.spool, 'private/control')), { mode: '600', uid: 0, gid: 0 });
    assert.equal(mode(queuedFile).uid, user, 'queue files belong to palisade');
    assert.equal(parseInt(mode(queuedFile).mode, 8) & 0o077, 0, 'queue files are private to palisade');
  });

  test('mail still flows end to end with the drop: a local recipient gets the message in the Maildir', async () => {
    const c = await openSession(p.port);
    try {
      await c.ok('MAIL FROM:<a@example.com>');
      await c.ok('RCPT TO:<user@mx.test>');
      await c.ok('DATA', 354);
      c.write('Subject: dropped\r\n\r\nhello\r\n.\r\n');
      await c.expect(250, '2.0.0');
    } finally {
      c.close();
    }
    const [msg] = await waitMaildir(dir, 'user');
    assert.ok(msg!.toString('latin1').endsWith('Subject: dropped\n\nhello\n'));
  });

  test('smtpd\'s argv under its uid cannot read a queued message or list incoming/ (the permission model refuses first)', () => {
    const pid = childrenByRole(p).get('smtpd')![0]!;
    const ids = procIds(pid);
    const r = runProbe(flagsOf(pid), { uid: ids.uid[0]!, gid: ids.gid[0]! }, [
      `read:${queuedFile}`, `list:${join(p.spool, 'incoming')}`, `list:${p.spool}`, `read:${join(ROOT, 'package.json')}`,
    ]);
    assert.equal(r[`read:${queuedFile}`], 'ERR_ACCESS_DENIED');
    assert.equal(r[`list:${join(p.spool, 'incoming')}`], 'ERR_ACCESS_DENIED');
    assert.equal(r[`list:${p.spool}`], 'ERR_ACCESS_DENIED');
    assert.equal(r[`read:${join(ROOT, 'package.json')}`], 'ok', 'the probe does run with smtpd\'s grants (it can read the code)');
  });

  test('without the permission model, smtpd\'s uid still cannot read a queued message or list the spool (the uid and mode wall)', () => {
    const ids = procIds(childrenByRole(p).get('smtpd')![0]!);
    const r = runProbe([], { uid: ids.uid[0]!, gid: ids.gid[0]! }, [
      `read:${queuedFile}`, `list:${join(p.spool, 'incoming')}`, `list:${join(p.spool, 'deferred')}`, `list:${p.spool}`,
    ]);
    assert.deepEqual(r, {
      [`read:${queuedFile}`]: 'EACCES',
      [`list:${join(p.spool, 'incoming')}`]: 'EACCES',
      [`list:${join(p.spool, 'deferred')}`]: 'EACCES',
      [`list:${p.spool}`]: 'EACCES',
    });
  });

  test('cleanup\'s argv under its uid reads the same queued message (the probe is not simply broken)', () => {
    const pid = childrenByRole(p).get('cleanup')![0]!;
    const ids = procIds(pid);
    const r = runProbe(flagsOf(pid), { uid: ids.uid[0]!, gid: ids.gid[0]! }, [`read:${queuedFile}`, `list:${join(p.spool, 'deferred')}`, `read:/etc/shadow`]);
    assert.equal(r[`read:${queuedFile}`], 'ok:message');
    assert.equal(r[`list:${join(p.spool, 'deferred')}`], 'ok');
    assert.equal(r['read:/etc/shadow'], 'ERR_ACCESS_DENIED', 'but nothing outside its grants');
  });
});
