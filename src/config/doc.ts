// SPDX-License-Identifier: MIT
// The configuration reference (docs/configuration.md) generated from the schema: every key, its default
// and its doc line. A test fails when a key has no doc or the file is stale.

import { z } from 'zod';
import { configSchema } from './schema.ts';

/** Keys whose default depends on the machine: shown as a placeholder. */
const PLACEHOLDERS: Record<string, string> = {
  'server.hostname': '"" (the OS hostname)',
  'local.domains': '[] (localhost and the hostname)',
  'local.mailbox_dir': '"" (<data_dir>/mail)',
  'queue.dir': '"" (<data_dir>/spool)',
};

function unwrap(s: z.ZodType): z.ZodType {
  let cur = s as z.ZodType & { _zod: { def: { innerType?: z.ZodType } } };
  while (cur._zod.def.innerType !== undefined) cur = cur._zod.def.innerType as typeof cur;
  return cur;
}

/** Every [section] key with its description (undefined when missing). */
export function configKeys(): { section: string; key: string; description: string | undefined; defaultValue: unknown }[] {
  const defaults = configSchema.parse({}) as Record<string, Record<string, unknown>>;
  const out: { section: string; key: string; description: string | undefined; defaultValue: unknown }[] = [];
  for (const [section, sec] of Object.entries(configSchema.shape)) {
    const inner = unwrap(sec as z.ZodType);
    if (inner instanceof z.ZodObject) {
      for (const [key, field] of Object.entries(inner.shape)) {
        out.push({ section, key, description: (field as z.ZodType).description, defaultValue: defaults[section]![key] });
      }
    } else {
      out.push({ section, key: '(table)', description: (sec as z.ZodType).description, defaultValue: defaults[section] });
    }
  }
  return out;
}

function show(v: unknown): string {
  return JSON.stringify(v).replace(/,/g, ', ');
}

/** Renders docs/configuration.md. */
export function renderConfigDoc(): string {
  let out = '# Configuration reference\n\n' +
    'Generated from `src/config/schema.ts` by `npm run docs:config`; do not edit by hand.\n\n' +
    'One TOML file: `--config FILE`, else `$PALISADE_CONFIG`, else `./palisade.toml`, else these defaults.\n' +
    'Durations are strings such as `"500ms"`, `"30s"`, `"5m"`, `"4h"`, `"5d"`; sizes are bytes. Unknown keys,\n' +
    'wrong types and bad values stop Palisade with exit code 78 and a message naming the key and line.\n' +
    'Sections `[submissions]`, `[tls]` and `[tls.policy]` of the contract arrive with TLS support and are refused until then.\n';
  let current = '';
  for (const k of configKeys()) {
    if (k.section !== current) {
      current = k.section;
      out += `\n## [${current}]\n\n| key | default | meaning |\n|---|---|---|\n`;
    }
    const def = PLACEHOLDERS[`${k.section}.${k.key}`] ?? show(k.defaultValue);
    out += `| \`${k.key}\` | \`${def.replace(/\|/g, '\\|').replace(/\n/g, ' ')}\` | ${(k.description ?? '').replace(/\|/g, '\\|')} |\n`;
  }
  return out;
}
