// SPDX-License-Identifier: MIT
// dns: the resolver every lookup goes through (MX/A/AAAA/TXT, TLSA later) with the configured servers, timeout
// and the DNSSEC AD bit. A library; never calls getaddrinfo.

export { createResolver, parseServer, systemServers, type Resolver, type DnsAnswer, type DnsStatus, type MxRecord, type DnsServer } from './resolver.ts';
export { resolveNextHops, type NextHop, type HopResolution } from './mx.ts';
