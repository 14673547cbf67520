// SPDX-License-Identifier: MIT
// Anvil: counts sessions in one place for all smtpd workers (global and per client IP), so limits hold
// across processes. Runs inside master until shared state moves to Redis.

/** Verdict for a new connection. */
export type Admission = 'ok' | 'global' | 'ip';

/** Session limits as configured. */
export interface AnvilLimits {
  readonly maxSessions: number;
  /** 0 = unlimited. */
  readonly maxSessionsPerIp: number;
}

/** The counter. `admit` counts the session when it answers 'ok'; `release` uncounts it. */
export class Anvil {
  private limits: AnvilLimits;
  private total = 0;
  private readonly perIp = new Map<string, number>();

  constructor(limits: AnvilLimits) {
    this.limits = limits;
  }

  /** Replaces the limits (reload); current sessions stay counted. */
  setLimits(limits: AnvilLimits): void {
    this.limits = limits;
  }

  /** Decides and counts a session from `ip`; `exempt` skips the per-IP limit (trusted networks). */
  admit(ip: string, exempt: boolean): Admission {
    if (this.total >= this.limits.maxSessions) return 'global';
    const n = this.perIp.get(ip) ?? 0;
    if (!exempt && this.limits.maxSessionsPerIp > 0 && n >= this.limits.maxSessionsPerIp) return 'ip';
    this.total++;
    this.perIp.set(ip, n + 1);
    return 'ok';
  }

  /** Uncounts a session admitted earlier. */
  release(ip: string): void {
    const n = this.perIp.get(ip);
    if (n === undefined) return;
    this.total = Math.max(0, this.total - 1);
    if (n <= 1) this.perIp.delete(ip);
    else this.perIp.set(ip, n - 1);
  }

  /** Drops every count of sessions owned by a worker that died (its sessions are gone). */
  releaseAll(ips: readonly string[]): void {
    for (const ip of ips) this.release(ip);
  }

  /** Current number of sessions. */
  get sessions(): number {
    return this.total;
  }
}
