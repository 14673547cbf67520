// SPDX-License-Identifier: MIT
// MasterGate: an smtpd worker's side of the shared session count (the anvil lives in master). Admits with a
// slot master leased to the worker when it can, else asks master; gathers the session events master must
// hear of into batches; counts messages and recipients against the per-IP rates through master.

import type { Admission } from '../policy/index.ts';
import type { SessionGate } from './index.ts';

/** What the gate tells master. */
export type GateNotice =
  | { type: 'sessions'; open: string[]; release: string[]; kept: string[]; returned: number; revoked: boolean; want: boolean }
  | { type: 'admit'; id: number; ip: string; exempt: boolean }
  | { type: 'message'; id: number; ip: string; exempt: boolean; kind: 'message' | 'recipient' };

/** Master's messages the gate takes (MasterGate.handle). */
export interface GateMessage {
  readonly type: string;
  readonly id?: number;
  readonly ok?: boolean;
  readonly verdict?: Admission;
  readonly n?: number;
  readonly chunk?: number;
  readonly stress?: boolean;
  readonly diskLow?: boolean;
}

export interface MasterGateOptions {
  /** Sends to master. */
  send(m: GateNotice): void;
  /** Whether master can be reached now (batches are dropped when not: the process is ending). */
  connected(): boolean;
  /** Whether the worker accepts new connections now: only such a worker asks for session slots. */
  accepting(): boolean;
  /** Per-IP session or connection-rate limits are on: then only exempt clients are admitted on a lease. */
  readonly perIpLimits: boolean;
  /** How long opens and kept slots may wait to travel together. */
  readonly batchMs: number;
}

/**
 * Session slots master leased to this worker: a client no per-IP limit applies to is admitted at once with
 * one, and master hears of it in the next batch (one message per event-loop turn, not a round trip per
 * connection). Without a slot, admission asks master. When such a session ends the worker keeps its slot for
 * the next client (`keep`: until master calls its slots back; never more than a lease's worth) and tells
 * master in the next batch too.
 */
export class MasterGate implements SessionGate {
  readonly flags = { stress: false, diskLow: false };
  private readonly o: MasterGateOptions;
  private nextId = 1;
  private readonly admits = new Map<number, (a: Admission) => void>();
  private readonly counts = new Map<number, (ok: boolean) => void>();
  private readonly lease = { budget: 0, chunk: 0, asked: false, returned: 0, revoked: false, keep: false };
  private batch = { open: [] as string[], release: [] as string[], kept: [] as string[] };
  private timer: NodeJS.Timeout | null = null;
  private immediate = false;

  constructor(o: MasterGateOptions) {
    this.o = o;
  }

  admit(ip: string, exempt: boolean): Admission | Promise<Admission> {
    if (this.lease.budget > 0 && (exempt || !this.o.perIpLimits)) {
      this.lease.budget--;
      this.batch.open.push(ip);
      this.schedule(false);
      return 'ok';
    }
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.admits.set(id, resolve);
      this.o.send({ type: 'admit', id, ip, exempt });
    });
  }

  release(ip: string, leased: boolean): void {
    // Kept up to the lease size: beyond it the slot goes back to master for the other workers.
    if (leased && this.lease.keep && this.lease.budget < this.lease.chunk) {
      this.lease.budget++;
      this.batch.kept.push(ip);
      this.schedule(false);
      return;
    }
    this.batch.release.push(ip);
    this.schedule(true);
  }

  message(ip: string, exempt: boolean, kind: 'message' | 'recipient' = 'message'): Promise<boolean> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.counts.set(id, resolve);
      this.o.send({ type: 'message', id, ip, exempt, kind });
    });
  }

  /** The worker has started accepting: asks master for slots at the end of this turn. */
  askSlots(): void {
    this.schedule(true);
  }

  /** Takes master's message if it is the gate's (answers, leases, flags); false when it is not. */
  handle(m: GateMessage): boolean {
    switch (m.type) {
      case 'message': {
        const w = this.counts.get(m.id!);
        this.counts.delete(m.id!);
        w?.(m.ok !== false);
        return true;
      }
      case 'admit': {
        const w = this.admits.get(m.id!);
        this.admits.delete(m.id!);
        w?.(m.verdict!);
        return true;
      }
      case 'lease':
        this.lease.budget += m.n ?? 0;
        this.lease.chunk = m.chunk ?? 0;
        this.lease.asked = false;
        this.lease.keep = true;
        return true;
      case 'revoke':
        this.lease.returned += this.lease.budget;
        this.lease.budget = 0;
        this.lease.revoked = true;
        this.lease.asked = false;
        this.lease.keep = false;
        this.flush();
        return true;
      case 'flags':
        this.flags.stress = m.stress === true;
        this.flags.diskLow = m.diskLow === true;
        return true;
      default:
        return false;
    }
  }

  // Opens (on leased slots, already allowed for) and ends of sessions whose slot the worker keeps may wait
  // batchMs to travel together; any other release goes at the end of this event-loop turn, so master never
  // counts a finished session for longer than that and refuses nobody for it.
  private schedule(urgent: boolean): void {
    if (urgent) {
      if (!this.immediate) {
        this.immediate = true;
        setImmediate(() => this.flush());
      }
    } else if (this.timer === null && !this.immediate) this.timer = setTimeout(() => this.flush(), this.o.batchMs);
  }

  private flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.immediate = false;
    if (!this.o.connected()) return;
    const lease = this.lease;
    const b = this.batch;
    // Only a worker that accepts new connections admits sessions.
    const want = this.o.accepting() && !lease.asked && lease.budget <= lease.chunk / 2;
    if (b.open.length === 0 && b.release.length === 0 && b.kept.length === 0 && lease.returned === 0 && !lease.revoked && !want) return;
    if (want) lease.asked = true;
    this.o.send({ type: 'sessions', open: b.open, release: b.release, kept: b.kept, returned: lease.returned, revoked: lease.revoked, want });
    this.batch = { open: [], release: [], kept: [] };
    lease.returned = 0;
    lease.revoked = false;
  }
}
