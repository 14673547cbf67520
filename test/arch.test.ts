// SPDX-License-Identifier: MIT
// Architecture rules (STYLE.md): core imports nothing else; another component is imported only through its
// index.ts; process folders never import each other; libraries never import process folders.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../src');
const PROCESSES = new Set(['master', 'smtpd', 'cleanup', 'qmgr', 'delivery', 'cli']);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') && !p.endsWith('.test.ts') ? [p] : [];
  });
}

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^(?:import|export)[^'"]*from\s+'(\.[^']+)'/gm)].map((m) => resolve(dirname(file), m[1]!));
}

const component = (p: string): string => relative(SRC, p).split('/')[0]!;

test('components import each other only through index.ts, core imports nothing, processes never import processes', () => {
  const problems: string[] = [];
  for (const f of files(SRC)) {
    const from = component(f);
    if (from === 'main.ts') continue;
    for (const target of imports(f)) {
      const to = component(target);
      if (to === from) continue;
      const where = `${relative(SRC, f)} → ${relative(SRC, target)}`;
      if (from === 'core') problems.push(`core imports ${where}`);
      else if (to !== 'core' && relative(SRC, target) !== `${to}/index.ts`) problems.push(`not through index.ts: ${where}`);
      else if (PROCESSES.has(to)) problems.push(`imports a process folder: ${where}`);
    }
  }
  assert.deepEqual(problems, []);
});
