// SPDX-License-Identifier: MIT
// Resolver: DNS queries over UDP (TCP when truncated) to the configured servers with dns-packet, so the AD bit
// is visible and tests can point it at a server on loopback. Never uses getaddrinfo.

import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { isIP } from 'node:net';
import * as packet from 'dns-packet';

/** Outcome kinds a caller branches on. */
export type DnsStatus = 'ok' | 'nxdomain' | 'nodata' | 'servfail' | 'timeout';

/** One answer set. */
export interface DnsAnswer<T> {
  readonly status: DnsStatus;
  readonly records: readonly T[];
  /** The server set the AD bit (DNSSEC-validated). */
  readonly authentic: boolean;
}

/** An MX record. */
export interface MxRecord {
  readonly preference: number;
  readonly exchange: string;
}

/** The resolver interface the delivery agents use (tests may pass their own). */
export interface Resolver {
  mx(domain: string): Promise<DnsAnswer<MxRecord>>;
  a(host: string): Promise<DnsAnswer<string>>;
  aaaa(host: string): Promise<DnsAnswer<string>>;
  txt(name: string): Promise<DnsAnswer<string>>;
}

/** A DNS server address. */
export interface DnsServer {
  readonly host: string;
  readonly port: number;
}

/** Parses "[::1]:53", "127.0.0.1:5353", "127.0.0.1" into a server. */
export function parseServer(s: string): DnsServer | null {
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (v6) return { host: v6[1]!, port: Number(v6[2] ?? 53) };
  if (isIP(s) === 6) return { host: s, port: 53 };
  const m = /^([0-9.]+)(?::(\d+))?$/.exec(s);
  if (m && isIP(m[1]!) === 4) return { host: m[1]!, port: Number(m[2] ?? 53) };
  return null;
}

/** Reads nameservers from /etc/resolv.conf (the [] default of [dns] servers). */
export function systemServers(path = '/etc/resolv.conf'): DnsServer[] {
  try {
    const out: DnsServer[] = [];
    for (const line of readFileSync(path, 'utf8').split('\n')) {
      const m = /^\s*nameserver\s+(\S+)/.exec(line);
      if (m) out.push({ host: m[1]!.replace(/%.*$/, ''), port: 53 });
    }
    return out.length > 0 ? out : [{ host: '127.0.0.1', port: 53 }];
  } catch {
    return [{ host: '127.0.0.1', port: 53 }];
  }
}

type AnyRecord = packet.Answer & { data?: unknown };

/** Creates a resolver for `servers` with a per-query `timeoutMs`. */
export function createResolver(servers: readonly DnsServer[], timeoutMs: number, dnssec: boolean): Resolver {
  async function query(name: string, type: packet.RecordType): Promise<{ status: DnsStatus; answers: AnyRecord[]; ad: boolean }> {
    let last: DnsStatus = 'timeout';
    for (const server of servers) {
      try {
        const res = await ask(server, name, type, timeoutMs, dnssec);
        const rcode = (res as { rcode?: string }).rcode ?? 'NOERROR';
        const ad = dnssec && ((res.flags ?? 0) & packet.AUTHENTIC_DATA) !== 0;
        if (rcode === 'NXDOMAIN') return { status: 'nxdomain', answers: [], ad };
        if (rcode !== 'NOERROR') {
          last = 'servfail';
          continue;
        }
        const answers = (res.answers ?? []).filter((a) => a.type === type) as AnyRecord[];
        return { status: answers.length > 0 ? 'ok' : 'nodata', answers, ad };
      } catch {
        last = 'timeout';
      }
    }
    return { status: last, answers: [], ad: false };
  }

  return {
    async mx(domain) {
      const r = await query(domain, 'MX');
      return { status: r.status, authentic: r.ad, records: r.answers.map((a) => a.data as { preference: number; exchange: string }).map((d) => ({ preference: d.preference, exchange: d.exchange.replace(/\.$/, '').toLowerCase() })) };
    },
    async a(host) {
      const r = await query(host, 'A');
      return { status: r.status, authentic: r.ad, records: r.answers.map((a) => a.data as string) };
    },
    async aaaa(host) {
      const r = await query(host, 'AAAA');
      return { status: r.status, authentic: r.ad, records: r.answers.map((a) => a.data as string) };
    },
    async txt(name) {
      const r = await query(name, 'TXT');
      return {
        status: r.status,
        authentic: r.ad,
        records: r.answers.map((a) => (Array.isArray(a.data) ? (a.data as (Buffer | string)[]).map(String).join('') : String(a.data))),
      };
    },
  };
}

function ask(server: DnsServer, name: string, type: packet.RecordType, timeoutMs: number, dnssec: boolean): Promise<packet.Packet> {
  const id = randomInt(65536);
  const q: packet.Packet = {
    type: 'query',
    id,
    flags: packet.RECURSION_DESIRED | (dnssec ? packet.AUTHENTIC_DATA : 0),
    questions: [{ type, name, class: 'IN' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: dnssec ? packet.DNSSEC_OK : 0 } as packet.Answer],
  };
  return new Promise((resolve, reject) => {
    const sock = createSocket(isIP(server.host) === 6 ? 'udp6' : 'udp4');
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error('timeout'));
    }, timeoutMs);
    sock.on('message', (msg) => {
      let res: packet.Packet;
      try {
        res = packet.decode(msg);
      } catch {
        return;
      }
      if (res.id !== id) return;
      clearTimeout(timer);
      sock.close();
      if ((res.flags ?? 0) & packet.TRUNCATED_RESPONSE) askTcp(server, q, timeoutMs).then(resolve, reject);
      else resolve(res);
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      try { sock.close(); } catch { /* closed */ }
      reject(e);
    });
    sock.send(packet.encode(q), server.port, server.host);
  });
}

function askTcp(server: DnsServer, q: packet.Packet, timeoutMs: number): Promise<packet.Packet> {
  return new Promise((resolve, reject) => {
    const sock = connect(server.port, server.host);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('timeout'));
    }, timeoutMs);
    sock.on('connect', () => sock.write(packet.streamEncode(q)));
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        clearTimeout(timer);
        sock.destroy();
        try {
          resolve(packet.streamDecode(buf));
        } catch (e) {
          reject(e as Error);
        }
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
