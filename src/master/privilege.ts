// SPDX-License-Identifier: MIT
// Privilege: when master runs as root, children run as the service users. Creates missing users as nologin
// system users and gives the spool the ownership and modes of ARCHITECTURE.md (root 0710 user:palisade,
// state directories 0700 user, private/ 0710 user:palisade).

import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Numeric identities the children run as; null = no drop (not root, or user = ""). */
export interface Identities {
  readonly user: { uid: number; gid: number };
  readonly smtpd: { uid: number; gid: number };
  readonly group: number;
}

/** The group both service users share. */
export const SERVICE_GROUP = 'palisade';

function lookup(file: string, name: string): string[] | null {
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === name) return f;
  }
  return null;
}

function ensureGroup(name: string, created: string[]): number {
  let g = lookup('/etc/group', name);
  if (g === null) {
    execFileSync('groupadd', ['--system', name], { stdio: 'pipe' });
    created.push(`group ${name}`);
    g = lookup('/etc/group', name);
  }
  if (g === null) throw new Error(`cannot create group ${name}`);
  return Number(g[2]);
}

function ensureUser(name: string, group: string, created: string[]): { uid: number; gid: number } {
  let u = lookup('/etc/passwd', name);
  if (u === null) {
    execFileSync('useradd', ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--gid', group, name], { stdio: 'pipe' });
    created.push(`user ${name}`);
    u = lookup('/etc/passwd', name);
  }
  if (u === null) throw new Error(`cannot create user ${name}`);
  return { uid: Number(u[2]), gid: Number(u[3]) };
}

/**
 * Resolves (creating when missing, with a group of its own) the user commands run as. Refused: root, either
 * service user, and any user whose group is the service group (private/cleanup is open to that group) or
 * root's group.
 */
export function ensureCommandUser(name: string, ids: Identities, created: string[]): { uid: number; gid: number } {
  let u = lookup('/etc/passwd', name);
  if (u === null) {
    execFileSync('useradd', ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--user-group', name], { stdio: 'pipe' });
    created.push(`user ${name}`);
    u = lookup('/etc/passwd', name);
  }
  if (u === null) throw new Error(`cannot create user ${name}`);
  const uid = Number(u[2]);
  const gid = Number(u[3]);
  if (uid === 0) throw new Error(`${name} is root`);
  if (uid === ids.user.uid || uid === ids.smtpd.uid) throw new Error(`${name} is a service user`);
  if (gid === ids.group) throw new Error(`${name}'s group is "${SERVICE_GROUP}"`);
  if (gid === 0) throw new Error(`${name}'s group is root's`);
  return { uid, gid };
}

/**
 * Resolves (creating when missing) the service users. Returns null when no drop applies.
 * `created` receives what was created, for the log.
 */
export function ensureIdentities(user: string, smtpdUser: string, created: string[]): Identities | null {
  if (process.getuid?.() !== 0 || user === '') return null;
  const group = ensureGroup(SERVICE_GROUP, created);
  const u = ensureUser(user, SERVICE_GROUP, created);
  const s = smtpdUser === '' ? u : ensureUser(smtpdUser, SERVICE_GROUP, created);
  return { user: { uid: u.uid, gid: group }, smtpd: { uid: s.uid, gid: group }, group };
}

/** Applies ownership and modes to the spool tree for the given identities. */
export function secureSpool(queueDir: string, ids: Identities, stateDirs: readonly string[]): void {
  chownSync(queueDir, ids.user.uid, ids.group);
  chmodSync(queueDir, 0o710);
  for (const d of stateDirs) {
    chownSync(join(queueDir, d), ids.user.uid, ids.group);
    chmodSync(join(queueDir, d), 0o700);
  }
  chownSync(join(queueDir, 'private'), ids.user.uid, ids.group);
  chmodSync(join(queueDir, 'private'), 0o710);
}
