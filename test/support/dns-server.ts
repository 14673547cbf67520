// SPDX-License-Identifier: MIT
// A tiny authoritative DNS server for tests: UDP on 127.0.0.1, port 0, serving a zone given as data
// (MX, A, AAAA, TXT). Unknown names get NXDOMAIN, known names without the asked type an empty NOERROR
// answer (NODATA). Point Palisade at it with `[dns] servers = ["127.0.0.1:PORT"]`.

import { createSocket, type Socket } from 'node:dgram';
import * as packet from 'dns-packet';

/** The records of one name. A null MX (RFC 7505) is `MX: [[0, '.']]`. */
export interface ZoneEntry {
  readonly MX?: readonly (readonly [preference: number, exchange: string])[];
  readonly A?: readonly string[];
  readonly AAAA?: readonly string[];
  readonly TXT?: readonly string[];
}

/** Names (any case, with or without the trailing dot) → records. */
export type Zone = Readonly<Record<string, ZoneEntry>>;

/** A running test DNS server. */
export interface DnsServer {
  readonly port: number;
  /** `[dns] servers = [...]` text for this server. */
  readonly servers: string;
  /** Every question asked so far, as "TYPE name". */
  readonly queries: string[];
  /** Names answered with SERVFAIL (temporary failure) instead of their records. */
  readonly servfail: Set<string>;
  close(): Promise<void>;
}

// Short TTL: nothing in a test should depend on caching.
const TTL = 5;

function norm(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** Starts the server on 127.0.0.1 with `zone`; resolves once it is bound. */
export async function startDnsServer(zone: Zone): Promise<DnsServer> {
  const names = new Map<string, ZoneEntry>(Object.entries(zone).map(([k, v]) => [norm(k), v]));
  const queries: string[] = [];
  const servfail = new Set<string>();
  const sock: Socket = createSocket('udp4');

  function answer(q: packet.Question): packet.Answer[] {
    const e = names.get(norm(q.name))!;
    const base = { name: q.name, class: 'IN' as const, ttl: TTL };
    switch (q.type) {
      case 'MX':
        return (e.MX ?? []).map(([preference, exchange]) => ({ ...base, type: 'MX' as const, data: { preference, exchange: exchange === '.' ? '.' : norm(exchange) } }));
      case 'A':
        return (e.A ?? []).map((data) => ({ ...base, type: 'A' as const, data }));
      case 'AAAA':
        return (e.AAAA ?? []).map((data) => ({ ...base, type: 'AAAA' as const, data }));
      case 'TXT':
        return (e.TXT ?? []).map((data) => ({ ...base, type: 'TXT' as const, data }));
      default:
        return [];
    }
  }

  sock.on('message', (msg, rinfo) => {
    let req: packet.Packet;
    try {
      req = packet.decode(msg);
    } catch {
      return; // not DNS: ignore, as a real server would
    }
    const q = req.questions?.[0];
    if (q === undefined) return;
    queries.push(`${q.type} ${norm(q.name)}`);
    const known = names.has(norm(q.name));
    const rcode = servfail.has(norm(q.name)) ? 'SERVFAIL' : known ? 'NOERROR' : 'NXDOMAIN';
    const res = {
      type: 'response' as const,
      id: req.id,
      flags: packet.AUTHORITATIVE_ANSWER | (rcode === 'SERVFAIL' ? 2 : rcode === 'NXDOMAIN' ? 3 : 0),
      questions: [q],
      answers: rcode === 'NOERROR' ? answer(q) : [],
    };
    sock.send(packet.encode(res), rinfo.port, rinfo.address);
  });

  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      sock.off('error', reject);
      resolve();
    });
  });
  const port = sock.address().port;
  return {
    port,
    servers: `[dns]\nservers = ["127.0.0.1:${port}"]\ntimeout = "1s"\n`,
    queries,
    servfail,
    close: () => new Promise<void>((r) => sock.close(() => r())),
  };
}
