// SPDX-License-Identifier: MIT
// classify: the operator's table of remote reply patterns that override the reply code's class
// (e.g. a provider that answers 550 for a temporary condition). The one place that reads reply text.

import type { RecipientResult } from './delivery.ts';

/** One override: replies matching `re` are temporary or permanent. */
export interface ReplyOverride {
  readonly re: RegExp;
  readonly action: 'temporary' | 'permanent';
}

/** The operator's table from config ([[delivery.reply_overrides]]), compiled. */
export function compileOverrides(table: readonly { readonly pattern: string; readonly action: 'temporary' | 'permanent' }[]): ReplyOverride[] {
  return table.map((o) => ({ re: new RegExp(o.pattern, 'i'), action: o.action }));
}

/** Applies the first matching override to a failed result; successes are never changed. */
export function classify(r: RecipientResult, overrides: readonly ReplyOverride[]): RecipientResult {
  if (r.status === 'sent' || overrides.length === 0) return r;
  for (const o of overrides) {
    if (!o.re.test(r.reply)) continue;
    const status = o.action === 'temporary' ? 'deferred' : 'bounced';
    if (status === r.status) return r;
    const cls = status === 'deferred' ? '4' : '5';
    return { ...r, status, dsn: cls + r.dsn.slice(1) };
  }
  return r;
}
