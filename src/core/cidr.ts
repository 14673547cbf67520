// SPDX-License-Identifier: MIT
// CIDR: network lists ("127.0.0.0/8", "::1/128") and membership tests for client addresses.

import { BlockList, isIP } from 'node:net';

/** Parses a CIDR or a bare address into [address, prefix, family], or null when invalid. */
export function parseCidr(text: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | null {
  const [addr, pfx, extra] = text.split('/');
  if (extra !== undefined || addr === undefined) return null;
  const fam = isIP(addr);
  if (fam === 0) return null;
  const max = fam === 4 ? 32 : 128;
  const prefix = pfx === undefined ? max : /^\d{1,3}$/.test(pfx) ? Number(pfx) : NaN;
  if (!(prefix >= 0 && prefix <= max)) return null;
  return { address: addr, prefix, family: fam === 4 ? 'ipv4' : 'ipv6' };
}

/** A set of networks; `has(ip)` also matches IPv4-mapped IPv6 client addresses ("::ffff:127.0.0.1"). */
export interface NetworkList {
  has(ip: string): boolean;
}

/** Builds a NetworkList from CIDR strings (already validated by the config). */
export function networkList(cidrs: readonly string[]): NetworkList {
  const bl = new BlockList();
  for (const c of cidrs) {
    const p = parseCidr(c);
    if (p !== null) bl.addSubnet(p.address, p.prefix, p.family);
  }
  return {
    has(ip: string): boolean {
      const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
      if (mapped !== null) return bl.check(mapped[1]!, 'ipv4');
      const fam = isIP(ip);
      if (fam === 0) return false;
      return bl.check(ip, fam === 4 ? 'ipv4' : 'ipv6');
    },
  };
}
