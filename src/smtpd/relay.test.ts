// SPDX-License-Identifier: MIT
// Unit tests for recipient policy at RCPT: local recipients, relay control, sender-specified routing.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { checkRecipient, type RecipientPolicy } from './relay.ts';
import { parsePath, type Mailbox } from '../core/address.ts';
import { networkList } from '../core/cidr.ts';
import { createTable } from '../lookup/index.ts';

const UNTRUSTED = '203.0.113.9';
const TRUSTED = '10.1.2.3';

function policy(over: Partial<RecipientPolicy> = {}): RecipientPolicy {
  return {
    localDomains: new Set(['example.com', 'localhost']),
    relayDomains: new Set(['backup.example']),
    trusted: networkList(['127.0.0.0/8', '::1/128', '10.0.0.0/8']),
    recipients: createTable(['alice', 'Bob@example.com']),
    aliases: createTable(['sales']),
    ...over,
  };
}

function mbox(path: string): Mailbox {
  const r = parsePath(path, false, true);
  assert.ok(r.ok && r.mailbox !== null, `bad test address ${path}`);
  return r.mailbox;
}

function verdict(path: string, ip: string, p: RecipientPolicy = policy()) {
  return checkRecipient(p, mbox(path), ip);
}

function assertRefused(v: ReturnType<typeof checkRecipient>, code: number, enhanced: string): void {
  assert.equal(v.ok, false, 'expected a refusal');
  if (!v.ok) {
    assert.equal(v.reply.code, code);
    assert.equal(v.reply.enhanced, enhanced);
  }
}

describe('checkRecipient', () => {
  test('accepts a known local recipient as local', () => {
    assert.deepEqual(verdict('<alice@example.com>', UNTRUSTED), { ok: true, local: true });
  });

  test('matches local parts case-insensitively and full addresses in the table', () => {
    assert.deepEqual(verdict('<ALICE@Example.com>', UNTRUSTED), { ok: true, local: true });
    assert.deepEqual(verdict('<bob@example.com>', UNTRUSTED), { ok: true, local: true });
  });

  test('refuses an unknown local recipient with 550 5.1.1', () => {
    assertRefused(verdict('<mallory@example.com>', UNTRUSTED), 550, '5.1.1');
    assertRefused(verdict('<mallory@example.com>', TRUSTED), 550, '5.1.1');
  });

  test('refuses a recipient listed only for another local domain', () => {
    assertRefused(verdict('<bob@localhost>', UNTRUSTED), 550, '5.1.1');
  });

  test('always accepts postmaster at a local domain, in any case', () => {
    assert.deepEqual(verdict('<postmaster@example.com>', UNTRUSTED), { ok: true, local: true });
    assert.deepEqual(verdict('<PostMaster@localhost>', UNTRUSTED), { ok: true, local: true });
    assert.deepEqual(verdict('<"postmaster"@example.com>', UNTRUSTED), { ok: true, local: true });
  });

  test('accepts an alias name as local', () => {
    assert.deepEqual(verdict('<Sales@example.com>', UNTRUSTED), { ok: true, local: true });
  });

  test('accepts every local part that can name a mailbox when the recipient table is empty', () => {
    const p = policy({ recipients: createTable([]) });
    assert.deepEqual(verdict('<anyone@example.com>', UNTRUSTED, p), { ok: true, local: true });
    assert.deepEqual(verdict('<First.Last+tag@example.com>', UNTRUSTED, p), { ok: true, local: true });
  });

  test('refuses, with an empty table, local parts no mailbox can have (550 5.1.1 now, not a bounce later)', () => {
    const p = policy({ recipients: createTable([]) });
    for (const bad of ['<_x@example.com>', '<a#b@example.com>', '<"../../etc"@example.com>', '<"..x"@example.com>']) {
      assertRefused(verdict(bad, UNTRUSTED, p), 550, '5.1.1');
    }
    // Alias names and postmaster are not mailbox names and still exist.
    const withAlias = policy({ recipients: createTable([]), aliases: createTable(['mailer_daemon']) });
    assert.deepEqual(verdict('<mailer_daemon@example.com>', UNTRUSTED, withAlias), { ok: true, local: true });
  });

  test('refuses relaying for an untrusted client with 554 5.7.1', () => {
    assertRefused(verdict('<victim@elsewhere.example>', UNTRUSTED), 554, '5.7.1');
  });

  test('lets a trusted client relay anywhere', () => {
    assert.deepEqual(verdict('<someone@elsewhere.example>', TRUSTED), { ok: true, local: false });
    assert.deepEqual(verdict('<someone@elsewhere.example>', '127.0.0.1'), { ok: true, local: false });
    assert.deepEqual(verdict('<someone@elsewhere.example>', '::1'), { ok: true, local: false });
  });

  test('treats an IPv4-mapped IPv6 client address like its IPv4 address', () => {
    assert.deepEqual(verdict('<someone@elsewhere.example>', '::ffff:127.0.0.1'), { ok: true, local: false });
    assertRefused(verdict('<someone@elsewhere.example>', '::ffff:203.0.113.9'), 554, '5.7.1');
  });

  test('accepts a relay domain from anyone, as not local', () => {
    assert.deepEqual(verdict('<someone@Backup.Example.>', UNTRUSTED), { ok: true, local: false });
  });

  test('refuses a subdomain of a relay domain from an untrusted client', () => {
    assertRefused(verdict('<someone@sub.backup.example>', UNTRUSTED), 554, '5.7.1');
  });

  const routing: [string, string][] = [
    ['the percent hack', '<victim%elsewhere.example@example.com>'],
    ['a bang path', '<elsewhere.example!victim@example.com>'],
    ['a quoted @', '<"victim@elsewhere.example"@example.com>'],
  ];
  for (const [what, path] of routing) {
    test(`refuses ${what} from an untrusted client with 554 5.7.1`, () => {
      assertRefused(verdict(path, UNTRUSTED), 554, '5.7.1');
    });
    test(`refuses ${what} even for a relay domain from an untrusted client`, () => {
      assertRefused(verdict(path.replace('example.com', 'backup.example'), UNTRUSTED), 554, '5.7.1');
    });
    test(`lets a trusted client use ${what}`, () => {
      const v = verdict(path.replace('@example.com', '@elsewhere.example'), TRUSTED);
      assert.deepEqual(v, { ok: true, local: false });
    });
  }

  test('refuses an IP literal from an untrusted client with 554 5.7.1', () => {
    assertRefused(verdict('<alice@[192.0.2.1]>', UNTRUSTED), 554, '5.7.1');
    assertRefused(verdict('<alice@[IPv6:2001:db8::1]>', UNTRUSTED), 554, '5.7.1');
  });

  test('never treats an IP literal as a local domain, even when its text is listed', () => {
    const p = policy({ localDomains: new Set(['[192.0.2.1]']), relayDomains: new Set(['[192.0.2.1]']) });
    assertRefused(verdict('<alice@[192.0.2.1]>', UNTRUSTED, p), 554, '5.7.1');
  });

  test('lets a trusted client send to an IP literal as relay', () => {
    assert.deepEqual(verdict('<alice@[192.0.2.1]>', TRUSTED), { ok: true, local: false });
  });
});
