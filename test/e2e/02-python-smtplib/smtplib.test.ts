// SPDX-License-Identifier: MIT
// Debian's Python smtplib → Palisade: SMTPUTF8 with a non-ASCII local part, and RFC 3461 DSN parameters
// (RET, ENVID, NOTIFY, ORCPT), all carried into the queue envelope; the UTF-8 message lands byte for byte.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startPalisade } from '../../support/palisade.ts';
import {
  parkingTransport, readQueued, removeDir, requirePeers, runPeer, skipWithoutPeers, splitReceived, startParkingHop, tempDir,
} from '../../support/peers.ts';

// Debian's interpreter on purpose: a pyenv or venv python3 on PATH is not what CI installs.
const PYTHON = '/usr/bin/python3';
const skip = skipWithoutPeers(PYTHON);

// One transaction with low-level smtplib calls so each reply can be checked; prints the replies as JSON.
const SCRIPT = String.raw`
import json, smtplib, sys
port = int(sys.argv[1])
msg = sys.stdin.buffer.read()
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20)
out = {}
code, text = s.ehlo()
out['ehlo'] = [code, text.decode()]
out['features'] = sorted(s.esmtp_features.keys())
def step(name, r):
    out[name] = [r[0], r[1].decode('utf-8')]
step('mail', s.mail('jörg@example.com', ['SMTPUTF8', 'BODY=8BITMIME', 'RET=HDRS', 'ENVID=e2e+2Benv-42']))
step('rcpt1', s.rcpt('josé@remote.test', ['NOTIFY=SUCCESS,FAILURE', 'ORCPT=rfc822;orig+2Buser@example.org']))
step('rcpt2', s.rcpt('plain@remote.test', ['NOTIFY=NEVER']))
step('rcpt3', s.rcpt('Δοκιμή@remote.test', ['NOTIFY=DELAY']))
step('data', s.data(msg))
step('quit', s.quit())
print(json.dumps(out))
`;

const MESSAGE = Buffer.from(
  'From: Jörg <jörg@example.com>\r\n' +
    'To: José <josé@remote.test>\r\n' +
    'Subject: héllo wörld\r\n' +
    'Message-ID: <e2e-smtplib@example.com>\r\n' +
    'MIME-Version: 1.0\r\n' +
    'Content-Type: text/plain; charset=utf-8\r\n' +
    'Content-Transfer-Encoding: 8bit\r\n' +
    '\r\n' +
    'Grüße aus Python — ☃\r\n' +
    '.a line that smtplib must stuff\r\n' +
    '.\r\n' +
    'end\r\n',
  'utf8',
);

test('python smtplib with SMTPUTF8 and DSN parameters: envelope flags, NOTIFY/ORCPT/RET/ENVID and UTF-8 bytes are queued', { skip }, async () => {
  requirePeers(PYTHON);
  const dir = tempDir('palisade-e2e-smtplib-');
  const hop = await startParkingHop();
  const p = await startPalisade({ dir, toml: parkingTransport(hop.port, ['remote.test']) });
  let out: Record<string, unknown>;
  try {
    // -I: isolated mode, so no user site-packages or PYTHON* variables change Debian's smtplib.
    const r = await runPeer(PYTHON, ['-I', '-c', SCRIPT, String(p.port)], { input: MESSAGE, timeoutMs: 30_000 });
    assert.equal(r.code, 0, `python failed:\n${r.stdout}\n${r.stderr}`);
    out = JSON.parse(r.stdout) as Record<string, unknown>;
  } finally {
    assert.equal(await p.stop(), 0, 'palisade exits 0 on SIGTERM');
    await hop.close();
  }
  try {
    assert.ok((out.features as string[]).includes('smtputf8'), 'EHLO advertises SMTPUTF8');
    assert.ok((out.features as string[]).includes('dsn'), 'EHLO advertises DSN');
    assert.deepEqual(out.mail, [250, '2.1.0 Sender ok']);
    for (const k of ['rcpt1', 'rcpt2', 'rcpt3']) assert.equal((out[k] as [number, string])[0], 250, `${k}: ${JSON.stringify(out[k])}`);
    const [code, text] = out.data as [number, string];
    assert.equal(code, 250, text);
    const qid = /^2\.0\.0 Ok: queued as ([0-9A-Z]{16})$/.exec(text)?.[1];
    assert.ok(qid !== undefined, `no queue ID in ${text}`);

    const q = await readQueued(p.spool, qid);
    const env = q.file.envelope;
    assert.equal(env.id, qid);
    assert.equal(env.smtputf8, true, 'SMTPUTF8 flag in the queue envelope');
    assert.equal(env.sender, 'jörg@example.com');
    assert.equal(env.ret, 'HDRS');
    assert.equal(env.envid, 'e2e+env-42', 'ENVID stored xtext-decoded');
    assert.equal(env.body, '8BITMIME');
    assert.deepEqual(env.recipients, [
      { address: 'josé@remote.test', notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;orig+user@example.org' },
      { address: 'plain@remote.test', notify: [] },
      { address: 'Δοκιμή@remote.test', notify: ['DELAY'] },
    ]);
    assert.equal(env.client.helo, 'client.test');
    assert.equal(env.client.ip, '127.0.0.1');
    assert.equal(env.client.protocol, 'UTF8SMTP');

    const { received, rest } = splitReceived(q.message);
    // RFC 6531 §3.7.3 / RFC 3848: "with UTF8SMTP"; three recipients, so no "for" clause.
    assert.match(received, new RegExp(`^Received: from client\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby mx\\.test \\(Palisade\\) with UTF8SMTP id ${qid};\\r\\n\\t.+ \\+0000\\r\\n$`));
    assert.ok(rest.equals(MESSAGE), `queued bytes differ:\n${JSON.stringify(rest.toString('utf8'))}`);
  } finally {
    removeDir(dir);
  }
});

test('python smtplib without SMTPUTF8: a non-ASCII local part is refused with 553 5.6.7 and nothing is queued', { skip }, async () => {
  requirePeers(PYTHON);
  const dir = tempDir('palisade-e2e-smtplib-');
  const p = await startPalisade({ dir });
  try {
    // smtplib only switches to UTF-8 commands when SMTPUTF8 is requested, so send the raw command ourselves.
    const script = String.raw`
import json, smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.test', timeout=20)
s.ehlo()
s.command_encoding = 'utf-8'
r = s.docmd('MAIL', 'FROM:<jörg@example.com>')
s.quit()
print(json.dumps([r[0], r[1].decode('utf-8')]))
`;
    const r = await runPeer(PYTHON, ['-I', '-c', script, String(p.port)], { timeoutMs: 30_000 });
    assert.equal(r.code, 0, `python failed:\n${r.stdout}\n${r.stderr}`);
    const [code, text] = JSON.parse(r.stdout) as [number, string];
    assert.equal(code, 553, text);
    assert.match(text, /^5\.6\.7 /);
    const list = await p.cli(['queue', 'list', '--json']);
    assert.equal(list.code, 0);
    assert.deepEqual(JSON.parse(list.stdout), []);
  } finally {
    assert.equal(await p.stop(), 0);
    removeDir(dir);
  }
});
