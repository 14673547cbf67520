// SPDX-License-Identifier: MIT
// Unit test: values from the envelope cannot add fields to a DSN's message/delivery-status part.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildDsn } from './index.ts';

test('an ENVID or ORCPT with CR, LF or NUL (a queue file from before smtpd refused them) adds no field', async () => {
  const dsn = buildDsn({
    hostname: 'mx.test', qid: '01ABCDEFGHJKMNPQ', sender: 'a@example.com', envid: 'abc\r\nFinal-Recipient: rfc822; evil@x\0',
    arrival: new Date(0), file: '/nonexistent', offset: 0, length: 0, eightBit: false, ret: 'HDRS',
    recipients: [{
      address: 'bob@relay.test', orcpt: 'rfc822;bob\r\nX-Injected: 1', action: 'failed', status: '5.1.1',
      diagnostic: '550 5.1.1 no such user', remoteMta: '', lastAttempt: new Date(0),
    }],
  });
  assert.ok(dsn !== null);
  const chunks: Buffer[] = [];
  for await (const c of dsn.parts) chunks.push(c);
  const text = Buffer.concat(chunks).toString('latin1');
  assert.ok(!text.includes('\0'));
  assert.match(text, /^Original-Envelope-Id: abcFinal-Recipient: rfc822; evil@x\r$/m);
  assert.match(text, /^Original-Recipient: rfc822; bobX-Injected: 1\r$/m);
  assert.doesNotMatch(text, /^X-Injected:/m);
  assert.equal(text.match(/^Final-Recipient:/gm)?.length, 1);
});
