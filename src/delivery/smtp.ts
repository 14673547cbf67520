// SPDX-License-Identifier: MIT
// SMTP and LMTP agents: find the hosts for a job's route (MX lookup, or the bracketed host), reuse a cached
// connection or open one (next host on failure), run the transaction, keep the connection for the next job.

import type { DeliveryJob, JobResult, RecipientResult } from '../core/delivery.ts';
import { resolveNextHops, type Resolver } from '../dns/index.ts';
import { ConnectionError } from './client.ts';
import { ClientSession, OpenError, type Endpoint, type OutboundMessage, type SessionOptions } from './session.ts';
import { dsnOf } from './session.ts';

/** Limits of the connection cache (RFC 5321 §4.5.3.2 says nothing; Postfix's defaults are similar). */
export interface CacheLimits {
  /** Idle connections are closed after this long. */
  readonly idleMs: number;
  /** A connection carries at most this many transactions. */
  readonly maxUses: number;
  /** At most this many idle connections per destination. */
  readonly perDestination: number;
}

/** Idle connections by destination. */
export class ConnectionCache {
  private readonly idle = new Map<string, ClientSession[]>();
  private readonly limits: CacheLimits;
  private readonly timer: NodeJS.Timeout;

  constructor(limits: CacheLimits) {
    this.limits = limits;
    this.timer = setInterval(() => this.expire(), Math.max(200, Math.min(limits.idleMs, 5000)));
    this.timer.unref();
  }

  /** Takes an idle connection for `dest`, if one is fresh. */
  take(dest: string): ClientSession | null {
    const list = this.idle.get(dest);
    while (list && list.length > 0) {
      const s = list.pop()!;
      if (s.reusable && Date.now() - s.lastUsed < this.limits.idleMs) return s;
      s.close();
    }
    return null;
  }

  /** Returns a connection after a job: kept when healthy and within limits, else closed. */
  give(dest: string, s: ClientSession): void {
    const list = this.idle.get(dest) ?? [];
    if (!s.reusable || s.uses >= this.limits.maxUses || list.length >= this.limits.perDestination) {
      s.close();
      return;
    }
    s.lastUsed = Date.now();
    list.push(s);
    this.idle.set(dest, list);
  }

  private expire(): void {
    const now = Date.now();
    for (const [dest, list] of this.idle) {
      const keep = list.filter((s) => {
        const ok = s.reusable && now - s.lastUsed < this.limits.idleMs;
        if (!ok) s.close();
        return ok;
      });
      if (keep.length === 0) this.idle.delete(dest);
      else this.idle.set(dest, keep);
    }
  }

  /** Closes everything (shutdown). */
  closeAll(): void {
    clearInterval(this.timer);
    for (const list of this.idle.values()) for (const s of list) s.close();
    this.idle.clear();
  }
}

/** What the SMTP/LMTP agent needs. */
export interface SmtpAgentDeps {
  readonly resolver: Resolver;
  readonly cache: ConnectionCache;
  readonly session: Omit<SessionOptions, 'lmtp'>;
  /** Our own hostname: a server greeting with it means the route loops back to us. */
  readonly hostname: string;
}

function everyone(job: DeliveryJob, status: RecipientResult['status'], dsn: string, reply: string, relay = ''): RecipientResult[] {
  return job.recipients.map((r) => ({ index: r.index, status, dsn, reply, relay }));
}

/** Endpoints to try for a job, in order. */
async function endpoints(job: DeliveryJob, deps: SmtpAgentDeps): Promise<Endpoint[] | { permanent: boolean; dsn: string; reason: string }> {
  const route = job.route;
  if (route.kind === 'lmtp-unix') return [{ path: route.path, name: `unix:${route.path}` }];
  if (route.kind !== 'smtp' && route.kind !== 'lmtp') return { permanent: true, dsn: '5.3.5', reason: 'bad route for the SMTP agent' };
  const res = await resolveNextHops(deps.resolver, route.host, route.kind === 'smtp' && route.mx);
  if (!res.ok) return res;
  const out: Endpoint[] = [];
  for (const hop of res.hops) {
    for (const addr of hop.addresses) {
      const name = hop.host === addr ? `${addr.includes(':') ? `[${addr}]` : addr}:${route.port}` : `${hop.host}[${addr}]:${route.port}`;
      out.push({ host: addr, port: route.port, name });
    }
  }
  return out;
}

/** Delivers one job over SMTP or LMTP. Never throws: failures become per-recipient results. */
export async function deliverSmtp(job: DeliveryJob, msg: OutboundMessage, deps: SmtpAgentDeps): Promise<JobResult> {
  const cached = deps.cache.take(job.nexthop);
  if (cached !== null) {
    // A cached connection may have been closed by the server meanwhile: then retry once on a fresh one.
    const r = await attempt(job, msg, deps, cached);
    if (r !== null) return r;
  }
  return (await attempt(job, msg, deps, null))!;
}

// One attempt; with a cached session, null means "the cached connection was dead, try a new one".
async function attempt(job: DeliveryJob, msg: OutboundMessage, deps: SmtpAgentDeps, cached: ClientSession | null): Promise<JobResult | null> {
  const lmtp = job.route.kind === 'lmtp' || job.route.kind === 'lmtp-unix';
  const opts: SessionOptions = { ...deps.session, lmtp };
  let session = cached;
  let lastError = 'no hosts to try';
  let lastDsn = '4.4.1';
  if (session === null) {
    let eps: Awaited<ReturnType<typeof endpoints>>;
    try {
      eps = await endpoints(job, deps);
    } catch (e) {
      return { results: everyone(job, 'deferred', '4.4.3', `DNS: ${(e as Error).message}`), destinationFailed: true };
    }
    if (!Array.isArray(eps)) {
      return { results: everyone(job, eps.permanent ? 'bounced' : 'deferred', eps.dsn, eps.reason), destinationFailed: !eps.permanent };
    }
    for (const ep of eps) {
      try {
        session = await ClientSession.open(ep, opts);
        break;
      } catch (e) {
        if (e instanceof OpenError && e.reply !== null) {
          lastError = `${ep.name} said: ${e.reply.code} ${e.reply.text}`;
          lastDsn = dsnOf(e.reply, 'mail');
          // RFC 7504: 521/556 say the host or domain accepts no mail at all — final. Any other refusal of the
          // greeting or EHLO may be a busy or misconfigured host: try the next one, then defer (as Postfix).
          if (e.reply.code === 521 || e.reply.code === 556) {
            return { results: everyone(job, 'bounced', lastDsn, lastError, ep.name), destinationFailed: false };
          }
        } else {
          lastError = (e as Error).message;
          lastDsn = '4.4.1';
        }
      }
    }
    if (session === null) return { results: everyone(job, 'deferred', lastDsn.startsWith('5') ? '4.4.1' : lastDsn, lastError), destinationFailed: true };
  }
  if (session.serverName !== '' && session.serverName === deps.hostname.toLowerCase() && !lmtp) {
    session.close();
    return { results: everyone(job, 'bounced', '5.4.6', `mail for ${job.nexthop} loops back to myself`, session.endpoint.name), destinationFailed: false };
  }
  let results: RecipientResult[];
  try {
    results = await session.transaction(job, msg);
  } catch (e) {
    session.close();
    if (cached !== null && e instanceof ConnectionError) return null;
    const why = e instanceof ConnectionError ? e.message : `internal error: ${(e as Error).message}`;
    return { results: everyone(job, 'deferred', '4.4.2', `lost connection with ${session.endpoint.name}: ${why}`, session.endpoint.name), destinationFailed: true };
  }
  // RFC 5321 §4.5.3.1.10: recipients refused for the server's recipient limit (452 4.5.3) while others were
  // taken go at once in another transaction on the same connection, not after a retry delay.
  const done = new Map(results.map((r) => [r.index, r]));
  for (;;) {
    const over = results.filter(overRecipientLimit);
    if (over.length === 0 || over.length === results.length) break;
    const pending = job.recipients.filter((r) => over.some((o) => o.index === r.index));
    try {
      results = await session.transaction({ ...job, recipients: pending }, msg);
    } catch (e) {
      // The recipients taken in earlier transactions stay delivered; the rest wait for a retry.
      session.close();
      const why = e instanceof ConnectionError ? e.message : `internal error: ${(e as Error).message}`;
      for (const r of pending) done.set(r.index, { index: r.index, status: 'deferred', dsn: '4.4.2', reply: `lost connection with ${session.endpoint.name}: ${why}`, relay: session.endpoint.name });
      return { results: job.recipients.map((r) => done.get(r.index)!), destinationFailed: false };
    }
    for (const r of results) done.set(r.index, r);
  }
  deps.cache.give(job.nexthop, session);
  return { results: job.recipients.map((r) => done.get(r.index)!), destinationFailed: false };
}

// A recipient the server refused only because the transaction had reached its recipient limit.
function overRecipientLimit(r: RecipientResult): boolean {
  return r.status !== 'sent' && /^[45]52 /.test(r.reply) && (r.dsn === '4.5.3' || r.dsn === '5.5.3' || /too many recipients/i.test(r.reply));
}

