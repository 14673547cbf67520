// SPDX-License-Identifier: MIT
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { configKeys, renderConfigDoc } from './doc.ts';

test('every config key has a doc line', () => {
  const missing = configKeys().filter((k) => !k.description).map((k) => `${k.section}.${k.key}`);
  assert.deepEqual(missing, []);
});

test('docs/configuration.md matches the schema (run npm run docs:config after changing it)', () => {
  const onDisk = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
  assert.equal(onDisk, renderConfigDoc());
});
