// SPDX-License-Identifier: MIT
// Anvil: counts sessions and rates in one place for all smtpd workers (global and per client IP), so limits
// hold across processes, and decides stress mode. Runs inside master until shared state moves to Redis.

/** Verdict for a new connection. */
export type Admission = 'ok' | 'global' | 'ip' | 'rate';

/** Limits as configured; 0 = unlimited for the per-IP ones. */
export interface AnvilLimits {
  readonly maxSessions: number;
  readonly maxSessionsPerIp: number;
  /** New connections per IP per minute. */
  readonly connectionRatePerIp: number;
  /** Messages (MAIL commands) per IP per minute. */
  readonly messageRatePerIp: number;
  /** Accepted recipients (RCPT commands) per IP per minute. */
  readonly recipientRatePerIp: number;
  /** Stress mode switches on at this fraction of maxSessions and off below 3/4 of it. */
  readonly stressAt: number;
}

/** Stress mode, once on, lasts at least this long. */
export const STRESS_MIN_MS = 2000;

// Rates are counted in one-minute windows of 6 ten-second buckets.
const BUCKET_MS = 10_000;
const BUCKETS = 6;

class Rate {
  private readonly counts = new Map<string, { base: number; b: number[] }>();

  /** Adds one event for `ip` at `now`; returns the count over the last minute including it. */
  hit(ip: string, now: number): number {
    const slot = Math.floor(now / BUCKET_MS);
    let e = this.counts.get(ip);
    if (e === undefined || slot - e.base >= BUCKETS * 2) {
      e = { base: slot, b: new Array<number>(BUCKETS).fill(0) };
      this.counts.set(ip, e);
    }
    while (slot - e.base >= BUCKETS) {
      e.b.shift();
      e.b.push(0);
      e.base++;
    }
    e.b[slot - e.base]!++;
    return e.b.reduce((a, x) => a + x, 0);
  }

  /** Drops entries idle for more than a minute (bounded memory). */
  sweep(now: number): void {
    const slot = Math.floor(now / BUCKET_MS);
    for (const [ip, e] of this.counts) if (slot - e.base >= BUCKETS * 2) this.counts.delete(ip);
  }
}

/** The counter. `admit` counts the session when it answers 'ok'; `release` uncounts it. */
export class Anvil {
  private limits: AnvilLimits;
  private total = 0;
  private readonly perIp = new Map<string, number>();
  private readonly connRate = new Rate();
  private readonly msgRate = new Rate();
  private readonly rcptRate = new Rate();
  private readonly now: () => number;
  private stress = false;
  private since = 0;
  private recheck: NodeJS.Timeout | null = null;
  /** Called when stress mode switches on or off. */
  onStress: ((on: boolean) => void) | null = null;

  constructor(limits: AnvilLimits, now: () => number = Date.now) {
    this.limits = limits;
    this.now = now;
  }

  /** Replaces the limits (reload); current sessions stay counted. */
  setLimits(limits: AnvilLimits): void {
    this.limits = limits;
    this.checkStress();
  }

  /** Decides and counts a session from `ip`; `exempt` skips the per-IP limits (trusted networks). */
  admit(ip: string, exempt: boolean): Admission {
    // Slots leased to workers are spoken for.
    if (this.total + this.leased >= this.limits.maxSessions) return 'global';
    const n = this.perIp.get(ip) ?? 0;
    if (!exempt && this.limits.maxSessionsPerIp > 0 && n >= this.limits.maxSessionsPerIp) return 'ip';
    if (!exempt && this.limits.connectionRatePerIp > 0 && this.connRate.hit(ip, this.now()) > this.limits.connectionRatePerIp) return 'rate';
    this.total++;
    this.perIp.set(ip, n + 1);
    this.checkStress();
    return 'ok';
  }

  // ---- Leases: session slots a worker may admit on its own, without a round trip per connection ----
  // Granted only while the sessions and leases together stay under half of max_sessions, and called back
  // (revoke) past three quarters, so a slot idle in one worker never keeps another worker's client out for
  // longer than one message to the worker and back. Only for clients no per-IP limit applies to.

  /** Slots leased out and not yet used or returned. */
  private leased = 0;

  /** Lease size per worker for `workers` workers; 0 = no leasing (a limit this small is counted exactly). */
  leaseChunk(workers: number): number {
    const chunk = Math.floor(this.limits.maxSessions / (8 * Math.max(1, workers)));
    return chunk >= 2 ? Math.min(chunk, 64) : 0;
  }

  /** Grants up to `chunk - holding` more slots to a worker holding `holding`; returns how many. */
  grant(holding: number, chunk: number): number {
    const room = Math.floor(this.limits.maxSessions / 2) - this.total - this.leased;
    const n = Math.min(chunk - holding, room);
    if (n <= 0 || this.stress) return 0;
    this.leased += n;
    return n;
  }

  /** Counts a session a worker admitted with one of its leased slots. */
  openLeased(ip: string): void {
    this.leased = Math.max(0, this.leased - 1);
    this.total++;
    this.perIp.set(ip, (this.perIp.get(ip) ?? 0) + 1);
    this.checkStress();
  }

  /**
   * `n` slots count as leased again: sessions admitted on leased slots ended and their worker kept the slots
   * for its next clients (the sessions themselves are released as usual). Sessions and leases together stay
   * as they were, so nobody else could have had those slots meanwhile, and the worker need not tell at once.
   */
  relet(n: number): void {
    this.leased += n;
  }

  /** Takes back `n` unused leased slots (returned, or their worker is gone). */
  unlease(n: number): void {
    this.leased = Math.max(0, this.leased - n);
  }

  /** Leases should be called back: sessions and leases together are past three quarters of the limit. */
  get overLeased(): boolean {
    return this.leased > 0 && this.total + this.leased > (this.limits.maxSessions * 3) / 4;
  }

  /** Counts one message from `ip`; false when it is over the per-minute rate. */
  message(ip: string, exempt: boolean): boolean {
    if (exempt || this.limits.messageRatePerIp === 0) return true;
    return this.msgRate.hit(ip, this.now()) <= this.limits.messageRatePerIp;
  }

  /** Counts one recipient from `ip`; false when it is over the per-minute rate. */
  recipient(ip: string, exempt: boolean): boolean {
    if (exempt || this.limits.recipientRatePerIp === 0) return true;
    return this.rcptRate.hit(ip, this.now()) <= this.limits.recipientRatePerIp;
  }

  /** Uncounts a session admitted earlier. */
  release(ip: string): void {
    const n = this.perIp.get(ip);
    if (n === undefined) return;
    this.total = Math.max(0, this.total - 1);
    if (n <= 1) this.perIp.delete(ip);
    else this.perIp.set(ip, n - 1);
    this.checkStress();
  }

  /** Forgets idle rate entries; call now and then. */
  sweep(): void {
    const t = this.now();
    this.connRate.sweep(t);
    this.msgRate.sweep(t);
    this.rcptRate.sweep(t);
  }

  // Stress mode (like Postfix's stress-adaptive behaviour): on near the session limit, off with hysteresis.
  private checkStress(): void {
    const on = this.limits.maxSessions * this.limits.stressAt;
    const next = this.stress ? this.total >= on * 0.75 : this.total >= on;
    if (next === this.stress) return;
    // Once on, stress mode stays on for STRESS_MIN_MS: with short sessions the count swings around the
    // threshold many times a second, and each switch is a log line and a message to every worker.
    const held = this.now() - this.since;
    if (!next && held < STRESS_MIN_MS) {
      if (this.recheck === null) {
        this.recheck = setTimeout(() => {
          this.recheck = null;
          this.checkStress();
        }, STRESS_MIN_MS - held);
        this.recheck.unref();
      }
      return;
    }
    this.stress = next;
    this.since = this.now();
    this.onStress?.(next);
  }

  /** Current number of sessions. */
  get sessions(): number {
    return this.total;
  }

  /** Slots leased to workers and not used (or kept again) at the moment. */
  get leasedSlots(): number {
    return this.leased;
  }

  /** Stress mode is on. */
  get stressed(): boolean {
    return this.stress;
  }
}
