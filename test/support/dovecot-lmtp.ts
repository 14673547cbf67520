// SPDX-License-Identifier: MIT
// A private Dovecot LMTP server on loopback, the real mailbox server for LMTP delivery tests (the logic of
// shared/recipes/dovecot-lmtp.sh, kept here so the repository is self-contained). Uses nothing under
// /etc/dovecot, /run or /var. Dovecot refuses to deliver as uid 0, so under root it runs as `nobody`.
// Mail for an existing user lands in <dir>/mail/<user>/Maildir/new/; an unknown user gets 550 5.1.1 at RCPT.
// LMTP listens on 127.0.0.1:port and on the Unix socket <dir>/run/lmtp.

import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, signal, waitForGreeting } from './net.ts';

export const DOVECOT = '/usr/sbin/dovecot';

/** A running private Dovecot LMTP server. */
export interface DovecotLmtp {
  readonly dir: string;
  readonly port: number;
  /** Its LMTP Unix socket. */
  readonly socket: string;
  /** Full paths of the files in `user`'s Maildir new/, sorted. */
  delivered(user: string): string[];
  /** Its log so far. */
  log(): string;
  /** Stops it (by its own PID) and removes the directory. */
  stop(): Promise<void>;
}

function chownTree(path: string, uid: number, gid: number): void {
  chownSync(path, uid, gid);
  for (const e of readdirSync(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    if (e.isDirectory()) chownTree(p, uid, gid);
    else chownSync(p, uid, gid);
  }
}

/** Starts Dovecot LMTP with `users` (local parts); the caller must stop() it in a finally block. */
export async function startDovecotLmtp(users: readonly string[]): Promise<DovecotLmtp> {
  const root = process.getuid!() === 0;
  const user = root ? 'nobody' : execFileSync('id', ['-un'], { encoding: 'utf8' }).trim();
  const group = execFileSync('id', ['-gn', user], { encoding: 'utf8' }).trim();
  const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
  const dir = mkdtempSync(join(tmpdir(), 'palisade-e2e-dovecot-'));
  chmodSync(dir, 0o755);
  for (const d of ['run', 'state', 'mail']) mkdirSync(join(dir, d));
  writeFileSync(join(dir, 'users'), users.map((u) => `${u}:{PLAIN}unused::::::\n`).join(''));
  const port = await freePort();
  writeFileSync(join(dir, 'dovecot.conf'), `instance_name = lmtp-${port}
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
info_log_path = ${dir}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_login_user = ${user}
default_internal_user = ${user}
default_internal_group = ${group}
first_valid_uid = 0
mail_location = maildir:${dir}/mail/%n/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n ${dir}/users
}
userdb {
  driver = passwd-file
  args = username_format=%n ${dir}/users
  default_fields = uid=${user} gid=${group} home=${dir}/mail/%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = ${port}
  }
  unix_listener lmtp {
    mode = 0600
  }
}
service anvil {
  chroot =
}
service log {
  user = ${user}
}
service config {
  user = ${user}
}
service auth {
  user = ${user}
}
service auth-worker {
  user = ${user}
}
service stats {
  user = ${user}
}
`);
  writeFileSync(join(dir, 'dovecot.log'), '');
  chownTree(dir, uid, gid);
  const argv = ['-F', '-c', join(dir, 'dovecot.conf')];
  // detached: its own session and process group, like the recipe's setsid.
  const proc = root
    ? spawn('setpriv', [`--reuid=${user}`, `--regid=${group}`, '--clear-groups', DOVECOT, ...argv], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] })
    : spawn(DOVECOT, argv, { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exited = new Promise<void>((r) => proc.on('exit', () => r()));
  const peer: DovecotLmtp = {
    dir,
    port,
    socket: join(dir, 'run/lmtp'),
    delivered(u) {
      const nd = join(dir, 'mail', u, 'Maildir/new');
      if (!existsSync(nd)) return [];
      return readdirSync(nd).sort().map((f) => join(nd, f));
    },
    log() {
      try {
        return readFileSync(join(dir, 'dovecot.log'), 'utf8');
      } catch {
        return '';
      }
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        signal(proc.pid!, 'SIGTERM');
        const killer = setTimeout(() => signal(-proc.pid!, 'SIGKILL'), 5000);
        await exited;
        clearTimeout(killer);
      }
      // Its helper processes share the process group and leave with their master; make sure of it.
      signal(-proc.pid!, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await Promise.race([
      waitForGreeting(port, 'dovecot lmtp'),
      exited.then(() => { throw new Error(`dovecot exited at start: ${stderr.slice(-800)} ${peer.log().slice(-800)}`); }),
    ]);
  } catch (e) {
    await peer.stop();
    throw e;
  }
  return peer;
}
