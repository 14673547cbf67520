// SPDX-License-Identifier: MIT
// A private Postfix instance on loopback as a real peer (the logic of shared/recipes/postfix-peer.sh, kept
// here so the repository is self-contained). It touches nothing in /etc/postfix and no other instance.
// It accepts mail for `domains` on 127.0.0.1:port into one catch-all Maildir per domain
// (<dir>/mail/<domain>/new/, LF line ends, Delivered-To: names the recipient) and relays everything else to
// `relay` (host:port, no MX lookup), so it can also send mail into Palisade. 127.0.0.0/8 may relay.
// Needs Debian's postfix and root (Postfix's own privilege separation); log: <dir>/maillog.

import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPeer } from './peers.ts';
import { freePort, signal, waitForGreeting, waitGone } from './net.ts';

export const POSTFIX = '/usr/sbin/postfix';
/** Postfix's sendmail(1) (the Debian package installs it here). */
export const POSTFIX_SENDMAIL = '/usr/sbin/sendmail';

/** A running private Postfix. */
export interface PostfixPeer {
  readonly dir: string;
  readonly port: number;
  /** Postfix's name in its greeting, Received: fields and EHLO. */
  readonly hostname: string;
  /** Its configuration directory, for `postfix -c` / `sendmail -C`. */
  readonly etc: string;
  /** Full paths of the files in the Maildir new/ of `domain`, sorted. */
  delivered(domain: string): string[];
  /** Its log so far. */
  maillog(): string;
  /** Stops it and waits for its master process to be gone; removes the directory unless `keep`. */
  stop(keep?: boolean): Promise<void>;
}

function idOf(args: string[]): number {
  return Number(execFileSync(args[0]!, args.slice(1), { encoding: 'utf8' }).trim().split(':')[0]);
}

// master.cf from Debian's prototype: smtpd on 127.0.0.1:port only, no service chrooted (our paths are not
// inside a chroot), as the recipe's two sed expressions do.
function masterCf(port: number): string {
  return readFileSync('/etc/postfix/master.cf.proto', 'utf8')
    .split('\n')
    .map((l) => l.replace(/^smtp( +)inet( +)n( +)-( +)y/, `127.0.0.1:${port} inet n - n`))
    .map((l) => (/^[a-z0-9]/.test(l) ? l.replace(/^([^ ]+ +[a-z-]+ +[-ny] +[-ny] +)y /, '$1n ') : l))
    .join('\n');
}

function mainCf(dir: string, port: number, domains: readonly string[], relay: string | undefined): string {
  const nobody = idOf(['id', '-u', 'nobody']);
  const nogroup = Number(execFileSync('getent', ['group', 'nogroup'], { encoding: 'utf8' }).split(':')[2]);
  const relayhost = relay === undefined ? '' : `[${relay.slice(0, relay.lastIndexOf(':'))}]:${relay.slice(relay.lastIndexOf(':') + 1)}`;
  return `compatibility_level = 3.6
queue_directory = ${dir}/spool
data_directory = ${dir}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-peer-${port}
maillog_file_prefixes = /tmp, /var, /dev/stdout, ${dir}
maillog_file = ${dir}/maillog
myhostname = peer-${port}.localdomain
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
virtual_mailbox_domains = ${domains.join(' ')}
virtual_mailbox_base = ${dir}/mail
virtual_mailbox_maps = inline:{${domains.map((d) => `@${d}=${d}/`).join(', ')}}
virtual_uid_maps = static:${nobody}
virtual_gid_maps = static:${nogroup}
relayhost = ${relayhost}
minimal_backoff_time = 2s
maximal_backoff_time = 4s
queue_run_delay = 2s
`;
}

/**
 * Starts a private Postfix receiving for `domains` (Maildir) and relaying the rest to `relay` ("host:port"),
 * on `port` (default: a free one). The caller must stop() it in a finally block.
 */
export async function startPostfixPeer(opts: { domains: readonly string[]; relay?: string; port?: number }): Promise<PostfixPeer> {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-e2e-postfix-'));
  // Postfix's daemons run as postfix/nobody and must traverse the directory.
  chmodSync(dir, 0o755);
  const etc = join(dir, 'etc');
  for (const d of ['etc', 'spool', 'data', 'mail']) mkdirSync(join(dir, d));
  const postfixUid = idOf(['id', '-u', 'postfix']);
  const postfixGid = idOf(['id', '-g', 'postfix']);
  chownSync(join(dir, 'data'), postfixUid, postfixGid);
  chownSync(join(dir, 'mail'), idOf(['id', '-u', 'nobody']), Number(execFileSync('getent', ['group', 'nogroup'], { encoding: 'utf8' }).split(':')[2]));
  if (existsSync('/etc/postfix/dynamicmaps.cf')) cpSync('/etc/postfix/dynamicmaps.cf', join(etc, 'dynamicmaps.cf'));
  if (existsSync('/etc/postfix/dynamicmaps.cf.d')) cpSync('/etc/postfix/dynamicmaps.cf.d', join(etc, 'dynamicmaps.cf.d'), { recursive: true });
  const port = opts.port ?? (await freePort());
  writeFileSync(join(etc, 'master.cf'), masterCf(port));
  writeFileSync(join(etc, 'main.cf'), mainCf(dir, port, opts.domains, opts.relay));
  const hostname = `peer-${port}.localdomain`;
  const pidFile = join(dir, 'spool/pid/master.pid');

  const masterPid = (): number | null => {
    try {
      const n = Number(readFileSync(pidFile, 'utf8').trim());
      return Number.isInteger(n) && n > 0 ? n : null;
    } catch {
      return null;
    }
  };
  const peer: PostfixPeer = {
    dir,
    port,
    hostname,
    etc,
    delivered(domain) {
      const nd = join(dir, 'mail', domain, 'new');
      if (!existsSync(nd)) return [];
      return readdirSync(nd).sort().map((f) => join(nd, f));
    },
    maillog() {
      try {
        return readFileSync(join(dir, 'maillog'), 'utf8');
      } catch {
        return '';
      }
    },
    async stop(keep = false) {
      const pid = masterPid();
      await runPeer(POSTFIX, ['-c', etc, 'stop'], { timeoutMs: 20_000 }).catch(() => undefined);
      if (pid !== null && !(await waitGone(pid, 10_000))) {
        // Its master ignored the stop: end it (its daemons exit when their master is gone).
        signal(pid, 'SIGKILL');
        await waitGone(pid, 5000);
      }
      if (!keep) rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    // `postfix start` runs Postfix's own configuration and permission checks first.
    const start = await runPeer(POSTFIX, ['-c', etc, 'start'], { timeoutMs: 30_000 });
    if (start.code !== 0) throw new Error(`postfix start failed (${start.code}): ${start.stderr.slice(-800)}`);
    await waitForGreeting(port, 'postfix peer');
  } catch (e) {
    await peer.stop();
    throw e;
  }
  return peer;
}
