// SPDX-License-Identifier: MIT
// Next hops for a domain (RFC 5321 §5.1): MX in preference order, random order among equal preferences,
// null MX (RFC 7505) is a permanent failure, no MX falls back to the domain's own A/AAAA.

import { isIP } from 'node:net';
import type { Resolver } from './resolver.ts';

/** A host to try with its addresses (IPv6 and IPv4). */
export interface NextHop {
  readonly host: string;
  readonly addresses: readonly string[];
}

/** Where to send, or why not. */
export type HopResolution =
  | { readonly ok: true; readonly hops: readonly NextHop[] }
  | { readonly ok: false; readonly permanent: boolean; readonly dsn: string; readonly reason: string };

function shuffle<T>(xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

/** Addresses of one host (literal IPs pass through). */
export async function hostAddresses(r: Resolver, host: string): Promise<{ addrs: string[]; temp: boolean; nx: boolean }> {
  if (isIP(host)) return { addrs: [host], temp: false, nx: false };
  const [a6, a4] = await Promise.all([r.aaaa(host), r.a(host)]);
  const addrs = [...a6.records, ...a4.records];
  const temp = [a6.status, a4.status].some((s) => s === 'servfail' || s === 'timeout');
  return { addrs, temp, nx: a4.status === 'nxdomain' && a6.status === 'nxdomain' };
}

/** Resolves the hosts to try for `domain`; `useMx` false = connect to `domain` itself (bracketed routes). */
export async function resolveNextHops(r: Resolver, domain: string, useMx: boolean): Promise<HopResolution> {
  if (!useMx) {
    const h = await hostAddresses(r, domain);
    if (h.addrs.length > 0) return { ok: true, hops: [{ host: domain, addresses: h.addrs }] };
    if (h.temp) return { ok: false, permanent: false, dsn: '4.4.3', reason: `cannot resolve ${domain}: temporary DNS failure` };
    return { ok: false, permanent: false, dsn: '4.4.1', reason: `host ${domain} has no address` };
  }
  const mx = await r.mx(domain);
  if (mx.status === 'servfail' || mx.status === 'timeout') {
    return { ok: false, permanent: false, dsn: '4.4.3', reason: `MX lookup of ${domain}: ${mx.status}` };
  }
  if (mx.status === 'nxdomain') return { ok: false, permanent: true, dsn: '5.1.2', reason: `domain ${domain} does not exist` };
  if (mx.status === 'ok') {
    // RFC 7505: a single MX with exchange "." (empty) means the domain accepts no mail.
    if (mx.records.length === 1 && (mx.records[0]!.exchange === '' || mx.records[0]!.exchange === '.')) {
      return { ok: false, permanent: true, dsn: '5.1.10', reason: `domain ${domain} accepts no mail (null MX)` };
    }
    const byPref = new Map<number, string[]>();
    for (const m of mx.records) {
      if (m.exchange === '' || m.exchange === '.') continue;
      byPref.set(m.preference, [...(byPref.get(m.preference) ?? []), m.exchange]);
    }
    const hosts = [...byPref.keys()].sort((a, b) => a - b).flatMap((p) => shuffle(byPref.get(p)!));
    const hops: NextHop[] = [];
    let temp = false;
    for (const host of hosts) {
      const h = await hostAddresses(r, host);
      if (h.addrs.length > 0) hops.push({ host, addresses: h.addrs });
      temp ||= h.temp;
    }
    if (hops.length > 0) return { ok: true, hops };
    return { ok: false, permanent: false, dsn: temp ? '4.4.3' : '4.4.4', reason: `no address for the MX hosts of ${domain}` };
  }
  // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
  const h = await hostAddresses(r, domain);
  if (h.addrs.length > 0) return { ok: true, hops: [{ host: domain, addresses: h.addrs }] };
  if (h.temp) return { ok: false, permanent: false, dsn: '4.4.3', reason: `address lookup of ${domain}: temporary failure` };
  return { ok: false, permanent: true, dsn: '5.1.2', reason: `domain ${domain} has no MX and no address` };
}
