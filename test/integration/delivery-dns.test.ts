// SPDX-License-Identifier: MIT
// Routing through DNS (RFC 5321 §5.1) against a test DNS server: MX hosts in preference order with fallback,
// the domain's own address without MX, null MX (RFC 7505) and NXDOMAIN bounced, SERVFAIL deferred.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade, type Running } from '../support/palisade.ts';
import { sendMessage, queueIdOf } from '../support/smtp-client.ts';
import { startSmtpPeer, type SmtpPeer } from '../support/smtp-server.ts';
import { startDnsServer, type DnsServer } from '../support/dns-server.ts';
import { parseDsn, waitMaildir } from '../support/mailbox.ts';

describe('next hops from DNS', () => {
  let dns: DnsServer;
  let peer: SmtpPeer;
  let p: Running;
  before(async () => {
    peer = await startSmtpPeer();
    dns = await startDnsServer({
      // The preferred MX has an address where nothing listens: delivery falls back to the next MX.
      'dest.test': { MX: [[20, 'mx2.dest.test'], [10, 'mx1.dest.test']] },
      'mx1.dest.test': { A: ['127.0.0.2'] },
      'mx2.dest.test': { A: ['127.0.0.1'] },
      'bare.test': { A: ['127.0.0.1'] },
      'nomail.test': { MX: [[0, '.']], A: ['127.0.0.1'] },
      'broken.test': { MX: [[10, 'mx.broken.test']] },
    });
    dns.servfail.add('broken.test');
    // "smtp:NAME:PORT" without brackets looks up the MX of NAME and connects to PORT (tests cannot use 25).
    const route = (d: string) => `"${d}" = "smtp:${d}:${peer.port}"`;
    p = await startPalisade({
      toml: `[transport]\n${['dest.test', 'bare.test', 'nomail.test', 'missing.test', 'broken.test'].map(route).join('\n')}\n` +
        `${dns.servers}[queue]\nretry_min = "1s"\nretry_max = "2s"\nscan_interval = "200ms"\n[delivery]\nworkers = 1\ntimeout = "5s"\nconnect_timeout = "2s"\n`,
    });
  });
  after(async () => {
    const code = await p?.stop();
    await peer?.close();
    await dns?.close();
    if (p) assert.equal(code, 0, 'Palisade exits 0 on SIGTERM');
  });

  test('a domain with MX records is delivered to the address of its MX host, trying the next MX when the first refuses', async () => {
    const r = await sendMessage(p.port, 'sender@client.test', ['user@dest.test'], 'Subject: mx\n\nvia MX\n');
    const qid = queueIdOf(r);
    const [m] = await peer.waitMessages(1);
    assert.deepEqual(m!.rcpts.map((x) => x.address), ['user@dest.test']);
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'sent');
    assert.equal(log.relay, `mx2.dest.test[127.0.0.1]:${peer.port}`);
    assert.ok(dns.queries.includes('MX dest.test'));
    assert.ok(dns.queries.includes('A mx1.dest.test'), 'the preferred MX was looked up first');
  });

  test('a domain without MX is delivered to its own address', async () => {
    const before = peer.messages.length;
    const qid = queueIdOf(await sendMessage(p.port, 'sender@client.test', ['user@bare.test'], 'Subject: a\n\nvia A\n'));
    await peer.waitMessages(before + 1);
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'sent');
    assert.equal(log.relay, `bare.test[127.0.0.1]:${peer.port}`);
  });

  test('a null MX domain is bounced with 5.1.10 and the sender gets a DSN saying so', async () => {
    const qid = queueIdOf(await sendMessage(p.port, 'nullmx@mx.test', ['user@nomail.test'], 'Subject: null mx\n\nnobody home\n'));
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'bounced');
    assert.equal(log.dsn, '5.1.10');
    const [raw] = await waitMaildir(p.dir, 'nullmx');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.recipients.length, 1);
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; user@nomail.test');
    assert.equal(dsn.recipients[0]!['action'], 'failed');
    assert.equal(dsn.recipients[0]!['status'], '5.1.10');
    assert.match(dsn.recipients[0]!['diagnostic-code']!, /null MX/);
    assert.equal(peer.messages.filter((m) => m.rcpts.some((r) => r.address === 'user@nomail.test')).length, 0);
  });

  test('a domain that does not exist (NXDOMAIN) is bounced with 5.1.2', async () => {
    const qid = queueIdOf(await sendMessage(p.port, 'nx@mx.test', ['user@missing.test'], 'Subject: nx\n\nno such domain\n'));
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'bounced');
    assert.equal(log.dsn, '5.1.2');
    const [raw] = await waitMaildir(p.dir, 'nx');
    const dsn = await parseDsn(raw!);
    assert.equal(dsn.recipients[0]!['status'], '5.1.2');
    assert.equal(dsn.recipients[0]!['final-recipient'], 'rfc822; user@missing.test');
  });

  test('a failing DNS server (SERVFAIL) defers the message with 4.4.3 instead of bouncing it', async () => {
    const qid = queueIdOf(await sendMessage(p.port, 'servfail@mx.test', ['user@broken.test'], 'Subject: sf\n\nlater\n'));
    const log = await p.waitLog((l) => l.event === 'delivery' && l.qid === qid);
    assert.equal(log.status, 'deferred');
    assert.equal(log.dsn, '4.4.3');
    const show = await p.cli(['queue', 'list', '--json']);
    const e = (JSON.parse(show.stdout) as { id: string; recipients: { state: string }[] }[]).find((x) => x.id === qid);
    assert.equal(e?.recipients[0]?.state, 'deferred');
  });
});
