// SPDX-License-Identifier: MIT
// Destinations: per-next-hop job queues with a concurrency window that starts small, grows on success and
// shrinks on failure (Postfix-style slow start), and a "dead" state so one failing destination defers its
// backlog at once instead of tying up deliveries. Jobs of different destinations never wait on each other.

/** A queued unit of work for one destination. */
export interface QueuedJob {
  readonly dest: string;
  /** Resolves null when the destination worked, else with why it failed ("" when there is nothing to say). */
  run(): Promise<string | null>;
  /** Called instead of run() when the destination is dead: the job is deferred with `reason`. */
  fail(reason: string): void;
}

/** Window limits. */
export interface WindowLimits {
  readonly initial: number;
  readonly max: number;
  /** Deliveries in flight over all destinations. */
  readonly global: number;
  /** How long a destination stays dead after repeated failures. */
  readonly deadMs: number;
  /** A destination's own window limits, where the operator set them ([delivery.destinations]). */
  readonly perDestination?: (key: string) => DestinationLimits;
}

/** Limits set for one destination; absent = the defaults. */
export interface DestinationLimits {
  readonly concurrency?: number;
  readonly initial_concurrency?: number;
  readonly max_recipients?: number;
}

/**
 * Looks a destination up in the [delivery.destinations] table: its exact key, else the nearest ".parent"
 * entry for a domain ("mx1.example.org" → ".example.org"). Keys compare case-insensitively.
 */
export function destinationTable(table: Readonly<Record<string, DestinationLimits>>): (key: string) => DestinationLimits {
  const t = new Map(Object.entries(table).map(([k, v]) => [k.toLowerCase(), v]));
  const none: DestinationLimits = {};
  if (t.size === 0) return () => none;
  return (key: string) => {
    const k = key.toLowerCase();
    const exact = t.get(k);
    if (exact !== undefined) return exact;
    if (k.startsWith('[') || k.includes(':') || k === 'local') return none;
    for (let i = k.indexOf('.'); i >= 0; i = k.indexOf('.', i + 1)) {
      const sub = t.get(k.slice(i));
      if (sub !== undefined) return sub;
    }
    return none;
  };
}

interface Dest {
  /** Upper bound of this destination's window. */
  max: number;
  queue: QueuedJob[];
  active: number;
  window: number;
  failures: number;
  deadUntil: number;
  deadReason: string;
  /** The last failure's reply, kept in the reason a dead destination's jobs are deferred with. */
  lastError: string;
}

/** The scheduler of jobs over destinations (round-robin between destinations for fairness). */
export class Destinations {
  private readonly dests = new Map<string, Dest>();
  private readonly limits: WindowLimits;
  private readonly now: () => number;
  private active = 0;
  private rr: string[] = [];

  constructor(limits: WindowLimits, now: () => number = Date.now) {
    this.limits = limits;
    this.now = now;
  }

  private dest(key: string): Dest {
    let d = this.dests.get(key);
    if (d === undefined) {
      const own = this.limits.perDestination?.(key) ?? {};
      const max = own.concurrency ?? this.limits.max;
      const initial = Math.min(max, own.initial_concurrency ?? this.limits.initial);
      d = { max, queue: [], active: 0, window: initial, failures: 0, deadUntil: 0, deadReason: '', lastError: '' };
      this.dests.set(key, d);
      this.rr.push(key);
    }
    return d;
  }

  /** Queues a job and starts what the windows allow. */
  add(job: QueuedJob): void {
    const d = this.dest(job.dest);
    if (d.deadUntil > this.now()) {
      job.fail(d.deadReason);
      return;
    }
    d.queue.push(job);
    this.pump();
  }

  /** Forgets which destinations are dead (an operator's flush): their next jobs are tried again. */
  revive(): void {
    for (const d of this.dests.values()) {
      d.deadUntil = 0;
      d.failures = 0;
      d.lastError = '';
    }
  }

  /** Jobs in flight over all destinations. */
  get inFlight(): number {
    return this.active;
  }

  /** Jobs waiting over all destinations. */
  get waiting(): number {
    let n = 0;
    for (const d of this.dests.values()) n += d.queue.length;
    return n;
  }

  private pump(): void {
    let progress = true;
    while (progress && this.active < this.limits.global) {
      progress = false;
      // One job per destination per round: a destination with a long queue cannot starve the others.
      for (const key of this.rr) {
        if (this.active >= this.limits.global) break;
        const d = this.dests.get(key)!;
        if (d.queue.length === 0 || d.active >= d.window) continue;
        const job = d.queue.shift()!;
        d.active++;
        this.active++;
        progress = true;
        void job.run().then(
          (error) => this.done(key, error),
          () => this.done(key, ''),
        );
      }
    }
    this.gc();
  }

  private done(key: string, error: string | null): void {
    const d = this.dest(key);
    d.active--;
    this.active--;
    if (error !== null) {
      d.failures++;
      d.lastError = error;
      d.window = Math.max(1, Math.floor(d.window / 2));
      // Repeated failures at the smallest window: the destination is down; defer its backlog now, with the cause
      // in sight (queue show, the DSN).
      if (d.window === 1 && d.failures >= 3) {
        d.deadUntil = this.now() + this.limits.deadMs;
        d.deadReason = `destination ${key} is not responding; backlog deferred${d.lastError ? `; last error: ${d.lastError}` : ''}`;
        const backlog = d.queue;
        d.queue = [];
        for (const j of backlog) j.fail(d.deadReason);
      }
    } else {
      d.failures = 0;
      d.lastError = '';
      d.deadUntil = 0;
      if (d.window < d.max) d.window++;
    }
    this.pump();
  }

  // Forget idle destinations so the map does not grow without bound.
  private gc(): void {
    if (this.rr.length < 1000) return;
    const now = this.now();
    this.rr = this.rr.filter((k) => {
      const d = this.dests.get(k)!;
      const keep = d.queue.length > 0 || d.active > 0 || d.deadUntil > now;
      if (!keep) this.dests.delete(k);
      return keep;
    });
  }
}
