// SPDX-License-Identifier: MIT
// Routing: recipient domain → route via the transport table ("domain", ".subdomains", "*"), local domains
// deliver locally, everything else by MX lookup of the domain.

import type { Route } from '../core/delivery.ts';

/** A route and the destination key jobs are grouped and throttled by. */
export interface Destination {
  readonly route: Route;
  readonly key: string;
}

/** Parses a transport value ("smtp:[h]:p", "smtp:h", "lmtp:h:p", "lmtp:unix:/p", "local"); null if invalid. */
export function parseRoute(value: string): Route | null {
  if (value === 'local') return { kind: 'local' };
  if (value.startsWith('lmtp:unix:')) return { kind: 'lmtp-unix', path: value.slice(10) };
  let m = /^lmtp:\[?([^\]]+?)\]?:(\d{1,5})$/.exec(value);
  if (m) return { kind: 'lmtp', host: m[1]!, port: Number(m[2]) };
  m = /^smtp:\[([^\]]+)\](?::(\d{1,5}))?$/.exec(value);
  if (m) return { kind: 'smtp', host: m[1]!, port: Number(m[2] ?? 25), mx: false };
  m = /^smtp:([A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(value);
  if (m) return { kind: 'smtp', host: m[1]!.toLowerCase(), port: Number(m[2] ?? 25), mx: true };
  return null;
}

function keyOf(r: Route): string {
  switch (r.kind) {
    case 'local':
      return 'local';
    case 'lmtp':
      return `lmtp:${r.host}:${r.port}`;
    case 'lmtp-unix':
      return `lmtp:unix:${r.path}`;
    case 'smtp':
      return r.mx ? (r.port === 25 ? r.host : `${r.host}:${r.port}`) : `[${r.host}]:${r.port}`;
  }
}

/** Builds the router for a transport table and the local domains. */
export function createRouter(transport: Readonly<Record<string, string>>, localDomains: ReadonlySet<string>): (address: string) => Destination {
  const table = new Map<string, Route>();
  for (const [k, v] of Object.entries(transport)) {
    const r = parseRoute(v);
    if (r !== null) table.set(k.toLowerCase().replace(/\.$/, ''), r);
  }
  const cache = new Map<string, Destination>();
  return (address: string) => {
    const domain = address.slice(address.lastIndexOf('@') + 1).toLowerCase();
    let d = cache.get(domain);
    if (d === undefined) {
      d = route(domain);
      if (cache.size > 10_000) cache.clear();
      cache.set(domain, d);
    }
    return d;
  };

  function route(domain: string): Destination {
    const exact = table.get(domain);
    if (exact) return { route: exact, key: keyOf(exact) };
    // ".example.org" covers every subdomain of example.org.
    for (let i = domain.indexOf('.'); i >= 0; i = domain.indexOf('.', i + 1)) {
      const sub = table.get(domain.slice(i));
      if (sub) return { route: sub, key: keyOf(sub) };
    }
    if (localDomains.has(domain)) return { route: { kind: 'local' }, key: 'local' };
    const star = table.get('*');
    if (star) return { route: star, key: keyOf(star) };
    if (domain.startsWith('[') && domain.endsWith(']')) {
      const ip = domain.slice(1, -1).replace(/^ipv6:/i, '');
      const r: Route = { kind: 'smtp', host: ip, port: 25, mx: false };
      return { route: r, key: keyOf(r) };
    }
    const r: Route = { kind: 'smtp', host: domain, port: 25, mx: true };
    return { route: r, key: keyOf(r) };
  }
}
