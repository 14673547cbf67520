// SPDX-License-Identifier: MIT
// Debian's Python smtplib → Palisade → Postfix's smtp-sink: several messages over one client connection,
// each relayed to the sink and dumped there; every one arrives with exactly the bytes smtplib sent behind
// Palisade's Received: (smtp-sink stores LF line ends), with the envelope and BODY=8BITMIME carried over.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade } from '../../support/palisade.ts';
import { removeDir, requirePeers, runPeer, skipWithoutPeers, tempDir } from '../../support/peers.ts';
import { SMTP_SINK, startSmtpSink, type SinkDump } from '../../support/smtp-sink.ts';

const PYTHON = '/usr/bin/python3';
const skip = skipWithoutPeers(PYTHON, SMTP_SINK);

// Sends every message of a JSON list over one connection with smtplib's low-level calls (smtplib dot-stuffs
// and ends DATA itself) and prints each DATA reply.
const SCRIPT = String.raw`
import base64, json, smtplib, sys
port = int(sys.argv[1])
jobs = json.load(sys.stdin)
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=30)
s.ehlo()
out = []
for j in jobs:
    code, text = s.mail(j['from'], j['options'])
    assert code == 250, (code, text)
    for r in j['to']:
        code, text = s.rcpt(r)
        assert code == 250, (code, text)
    code, text = s.data(base64.b64decode(j['data']))
    out.append([code, text.decode()])
s.quit()
print(json.dumps(out))
`;

interface Job {
  readonly from: string;
  readonly to: readonly string[];
  readonly options: readonly string[];
  readonly id: string;
  readonly data: Buffer;
}

function msg(id: string, headers: readonly string[], body: string): Buffer {
  return Buffer.from([`Message-ID: <${id}@example.com>`, 'From: <py@example.com>', `Subject: ${id}`, ...headers, '', body].join('\r\n'), 'utf8');
}

// A body near 300 KB whose lines often start with dots, so stuffing meets the queue file's 64 KiB read
// chunks and the sink's buffers at many offsets.
function bigBody(): string {
  const lines: string[] = [];
  for (let i = 0; lines.join('\r\n').length < 300_000; i++) lines.push(i % 3 === 0 ? `.${i} ${'y'.repeat(i % 200)}` : `${i} ${'z'.repeat((i * 7) % 300)}`);
  return lines.join('\r\n') + '\r\n';
}

const JOBS: readonly Job[] = [
  { id: 'py-dots', from: 'py@example.com', to: ['one@sink.test', 'two@sink.test'], options: [], data: msg('py-dots', ['To: one@sink.test, two@sink.test'], 'first\r\n.dot\r\n..two\r\n.\r\n...\r\ntrailing   \r\n\tlast\r\n') },
  { id: 'py-8bit', from: 'py@example.com', to: ['three@sink.test'], options: ['BODY=8BITMIME'], data: msg('py-8bit', ['MIME-Version: 1.0', 'Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: 8bit'], 'Grüße, ☃, 日本語\r\n.ünïcode after a dot\r\n') },
  { id: 'py-long', from: 'py@example.com', to: ['four@sink.test'], options: [], data: msg('py-long', [], `${'L'.repeat(998)}\r\n.${'M'.repeat(997)}\r\nend\r\n`) },
  { id: 'py-big', from: 'py@example.com', to: ['five@sink.test'], options: [], data: msg('py-big', [], bigBody()) },
  { id: 'py-empty-body', from: '', to: ['six@sink.test'], options: [], data: Buffer.from('Message-ID: <py-empty-body@example.com>\r\nSubject: no body\r\n\r\n') },
];

const DATE = '[A-Z][a-z]{2}, \\d{1,2} [A-Z][a-z]{2} \\d{4} \\d{2}:\\d{2}:\\d{2} \\+0000';

test('python smtplib → Palisade → smtp-sink: every message arrives with its bytes unchanged behind Palisade\'s Received:', { skip }, async () => {
  requirePeers(PYTHON, SMTP_SINK);
  const sink = await startSmtpSink();
  const dir = tempDir('palisade-e2e-sink-');
  try {
    const p = await startPalisade({ dir, toml: `[transport]\n"sink.test" = "smtp:[127.0.0.1]:${sink.port}"\n` });
    try {
      const input = JSON.stringify(JOBS.map((j) => ({ from: j.from, to: j.to, options: j.options, data: j.data.toString('base64') })));
      const r = await runPeer(PYTHON, ['-I', '-c', SCRIPT, String(p.port)], { input, timeoutMs: 60_000 });
      assert.equal(r.code, 0, `python failed:\n${r.stdout}\n${r.stderr}`);
      const replies = JSON.parse(r.stdout) as [number, string][];
      const qids = replies.map(([code, text]) => {
        assert.equal(code, 250, text);
        return /queued as ([0-9A-Z]{16})$/.exec(text)![1]!;
      });
      for (const [i, qid] of qids.entries()) {
        for (const to of JOBS[i]!.to) {
          const l = await p.waitLog((x) => x.event === 'delivery' && x.qid === qid && x.to === to, 30_000);
          assert.equal(l.status, 'sent', JSON.stringify(l));
          assert.equal(l.relay, `127.0.0.1:${sink.port}`);
        }
      }
      const dumps = await sink.settled(JOBS.length);
      assert.equal(dumps.length, JOBS.length, 'one transaction per message (both recipients of the first in one)');
      const byId = new Map<string, SinkDump>();
      for (const d of dumps) {
        const id = /^Message-ID: <([^>]+)@example\.com>$/m.exec(d.message)?.[1];
        assert.ok(id !== undefined, `${d.file}: no Message-ID`);
        assert.ok(!byId.has(id), `${id} delivered twice`);
        byId.set(id, d);
      }
      for (const [i, job] of JOBS.entries()) {
        const d = byId.get(job.id);
        assert.ok(d !== undefined, `${job.id} did not reach the sink`);
        assert.equal(d.helo, 'mx.test');
        assert.match(d.mailArgs, new RegExp(`^<${job.from.replace(/\./g, '\\.')}>`), `${job.id}: MAIL FROM`);
        assert.equal(/BODY=8BITMIME/.test(d.mailArgs), job.options.includes('BODY=8BITMIME'), `${job.id}: BODY=8BITMIME carried over (${d.mailArgs})`);
        assert.deepEqual(d.rcptArgs.map((a) => /^<([^>]*)>/.exec(a)![1]), job.to, `${job.id}: recipients`);
        const rcv = new RegExp(
          `^Received: from client\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\n\\tby mx\\.test \\(Palisade\\) with ESMTP id ${qids[i]}` +
            (job.to.length === 1 ? `\\n\\tfor <${job.to[0]!.replace(/\./g, '\\.')}>;` : ';') + `\\n\\t${DATE}\\n`,
        ).exec(d.message);
        assert.ok(rcv !== null, `${job.id}: Palisade's Received: is not first:\n${d.message.slice(0, 300)}`);
        const got = d.message.slice(rcv[0].length);
        const want = job.data.toString('latin1').replace(/\r\n/g, '\n');
        assert.ok(got === want, `${job.id}: bytes differ (got ${got.length}, want ${want.length}); first difference at ${firstDiff(got, want)}: ${JSON.stringify(got.slice(firstDiff(got, want) - 20, firstDiff(got, want) + 40))}`);
      }
      for (const qid of qids) await p.waitLog((l) => l.event === 'removed' && l.qid === qid);
    } finally {
      assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    }
  } finally {
    await sink.stop();
    removeDir(dir);
  }
});

function firstDiff(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}
