// SPDX-License-Identifier: MIT
// SmtpdWorkers: master's side of the smtpd worker processes. Starts them with the listening handles, keeps
// the anvil's count of their sessions (those master admitted, and those a worker admitted on session slots
// leased to it), hands out and calls back leases, replaces a generation on reload while the old one finishes
// its sessions, gives a dead worker's sessions and slots back, and chooses which workers accept new
// connections (acceptors.ts).

import type { ChildProcess } from 'node:child_process';
import type { Server } from 'node:net';
import type { Config } from '../config/index.ts';
import type { Logger } from '../log/index.ts';
import type { Anvil } from '../policy/index.ts';
import { LOAD_REPORT_MS, nextAcceptChange } from './acceptors.ts';
import { Supervised, type ChildSpec, type Grants } from './children.ts';
import type { CompileCache } from './compile-cache.ts';
import type { ListenHandle } from './startup.ts';

/** What the workers need from master. */
export interface SmtpdWorkersDeps {
  readonly log: Logger;
  readonly anvil: Anvil;
  /** Path of src/main.ts. */
  readonly entry: string;
  readonly cache?: CompileCache;
  /** The smtpd role's permission-model grants, asked at each (re)start. */
  readonly grants: () => Grants;
  /** The smtpd service user, or null without the privilege drop. */
  readonly ids: { readonly uid: number; readonly gid: number } | null;
  readonly cleanupPath: string;
  readonly handles: readonly ListenHandle[];
  /** Shared state the workers need at every MAIL (stress mode, spool short of space); sent on change. */
  readonly flags: { readonly stress: boolean; readonly diskLow: boolean };
  /** Master is stopping: nobody is admitted, no slots are leased. */
  readonly stopping: () => boolean;
  /** A worker could not listen on a handle (start-up fails). */
  readonly listenFailed: (display: string, code: string) => void;
  /** Makes the supervisor of one worker process (tests pass a fake; default: a real Supervised). */
  readonly supervise?: (spec: ChildSpec, log: Logger) => Supervisor;
  /** The clock of the acceptor choice (ms; default performance.now). */
  readonly now?: () => number;
}

/** What SmtpdWorkers uses of a Supervised. */
export type Supervisor = Pick<Supervised, 'child' | 'start' | 'stop'>;

interface Worker {
  sup: Supervisor;
  /** IPs the anvil counts for this worker's process (released if it dies). */
  ips: Map<string, number>;
  listening: number;
  ready: () => void;
  /** Session slots leased to this worker and not yet used or returned (see Anvil.grant). */
  lease: number;
  /** The worker asked for (more) slots. */
  wants: boolean;
  /** A revoke was sent and its answer has not come back. */
  revoking: boolean;
  /** It accepts new connections (told so at its start, or since an 'accept'). */
  accepting: boolean;
  /** Its event loop's utilization in its last report since the last change of who accepts, or null. */
  load: number | null;
  /** When it last reported its load, or became ready or began to accept (ms, performance.now()). */
  reportedAt: number;
}

// An accepting worker silent this long counts as fully busy: an event loop too busy (or stuck) to report
// is one that accepts nobody either, so another worker starts accepting.
const SILENT_MS = 4 * LOAD_REPORT_MS;
// Another worker starts accepting only after every accepting one has been busy for this long (not for a
// burst, or a worker's first sessions while its code is still cold), and one stops only after the load has
// been low enough for QUIET_HOLD_MS (a burst's quiet edge does not stop one the next burst needs again).
// With no worker accepting, one starts at once. Two seconds of quiet (eight reports): the light load that
// follows a burst runs on one worker soon, not on two that each find their code cold (0.13–0.17 ms of CPU per
// message more at one session).
const BUSY_HOLD_MS = 1000;
const QUIET_HOLD_MS = 2000;

type WorkerMessage =
  | { type: 'admit'; id: number; ip: string; exempt: boolean }
  | { type: 'sessions'; open: string[]; release: string[]; kept?: string[]; returned: number; revoked: boolean; want: boolean }
  | { type: 'message'; id: number; ip: string; exempt: boolean; kind?: 'message' | 'recipient' }
  | { type: 'listening'; display: string }
  | { type: 'load'; load: number }
  | { type: 'listen-error'; display: string; code: string };

/** The smtpd worker processes: the current generation, and the ones a reload retired. */
export class SmtpdWorkers {
  private readonly deps: SmtpdWorkersDeps;
  private readonly count: number;
  private generation: Worker[] = [];
  // Workers of earlier generations (reload) finishing their sessions.
  private readonly retiring = new Set<Worker>();
  private stopped = false;
  private started = false;
  private silenceCheck: NodeJS.Timeout | null = null;
  private lastCheck = 0;
  // When who accepts last changed, and since when a start or a stop has been due (null: it is not)
  // (this.now()).
  private changedAt = 0;
  private busySince: number | null = null;
  private quietSince: number | null = null;

  private readonly now: () => number;

  constructor(deps: SmtpdWorkersDeps, count: number) {
    this.deps = deps;
    this.count = count;
    this.now = deps.now ?? (() => performance.now());
  }

  /** Workers taking new connections. */
  get size(): number {
    return this.generation.length;
  }

  /** Starts the first generation; resolves once every worker listens on every handle. */
  async start(config: Config): Promise<void> {
    await Promise.all(Array.from({ length: this.count }, (_, i) => new Promise<void>((r) => this.generation.push(this.spawn(i, config, r, i === 0)))));
    // From here on a worker ready again (a restart) re-runs the choice; before, the first worker may simply
    // not have finished listening yet.
    this.started = true;
    if (this.stopped) return;
    this.rebalance();
    this.lastCheck = this.now();
    this.silenceCheck = setInterval(() => this.checkSilent(), LOAD_REPORT_MS).unref();
  }

  /**
   * Reload: a new generation takes new connections once it listens; the old one stops listening and each of
   * its workers exits once its clients are done (a session still there after `retireMs` is drained).
   */
  async replace(config: Config, retireMs: number, drainMs: number): Promise<void> {
    const old = this.generation;
    const fresh: Worker[] = [];
    // The new generation takes over with as many accepting workers as the old one had.
    const accepting = Math.max(1, old.filter((w) => w.accepting).length);
    await Promise.all(Array.from({ length: this.count }, (_, i) => new Promise<void>((r) => fresh.push(this.spawn(i, config, r, i < accepting)))));
    if (this.stopped) {
      // Master began to stop while they started: they never take a session.
      await Promise.all(fresh.map((w) => w.sup.stop({ type: 'drain', deadlineMs: 0 }, 2000)));
      return;
    }
    this.generation = fresh;
    // Loads and holds measured while the old generation shared the traffic say nothing about the new one.
    this.resetAcceptHolds();
    this.rebalance();
    for (const w of old) {
      this.retiring.add(w);
      void w.sup.stop({ type: 'retire', deadlineMs: retireMs, drainMs }, retireMs + drainMs + 5000).then(() => this.retiring.delete(w));
    }
    this.balanceLeases(); // the retiring workers' slots come back; the new ones may get theirs
  }

  /** Sends the current flags to every worker. */
  broadcastFlags(): void {
    for (const w of this.all()) if (w.sup.child?.connected) w.sup.child.send({ type: 'flags', ...this.deps.flags });
  }

  /** Drains every worker's sessions (at most `drainMs`), then stops them. */
  async stop(drainMs: number): Promise<void> {
    this.stopped = true;
    if (this.silenceCheck !== null) clearInterval(this.silenceCheck);
    await Promise.all(this.all().map((w) => w.sup.stop({ type: 'drain', deadlineMs: drainMs }, drainMs + 5000)));
  }

  /** After a failed start: stops what was started, at once. */
  async abort(): Promise<void> {
    await Promise.all(this.generation.map((w) => w.sup.stop({ type: 'drain', deadlineMs: 0 }, 2000)));
  }

  // Every worker process there is: the current generation and the retiring ones.
  private all(): Worker[] {
    return [...this.generation, ...this.retiring];
  }

  // Starts worker `index` with `config`, accepting new connections from its start or not; `onReady` once it
  // has every handle.
  private spawn(index: number, config: Config, onReady: () => void, accept: boolean): Worker {
    const { anvil, ids } = this.deps;
    // The others start accepting when the load asks for them (rebalance).
    const w: Worker = { sup: null as unknown as Supervisor, ips: new Map(), listening: 0, ready: onReady, lease: 0, wants: false, revoking: false, accepting: accept, load: null, reportedAt: this.now() };
    const supervise = this.deps.supervise ?? ((spec: ChildSpec, log: Logger) => new Supervised(spec, log));
    w.sup = supervise({
      role: 'smtpd',
      grants: this.deps.grants,
      index,
      entry: this.deps.entry,
      ...(this.deps.cache ? { cache: this.deps.cache } : {}),
      ...(ids ? { uid: ids.uid, gid: ids.gid } : {}),
      onSpawn: (child) => {
        w.listening = 0;
        w.load = null;
        // A restart (of a worker of the current generation) accepts only if no other worker does.
        if (this.generation.includes(w)) w.accepting = !this.generation.some((o) => o !== w && o.accepting);
        child.send({ type: 'init', role: 'smtpd', config, cleanupPath: this.deps.cleanupPath });
        child.send({ type: 'flags', ...this.deps.flags });
        this.deps.handles.forEach((h, i) => child.send({ type: 'listen', index: i, name: h.name, display: h.display, accept: w.accepting }, h.handle as Server));
        // Only the worker's current process speaks for it: a message of one already replaced is dropped.
        child.on('message', (m: WorkerMessage) => {
          if (w.sup.child === child) this.onMessage(w, child, m);
        });
      },
      onExit: () => {
        for (const [ip, n] of w.ips) for (let i = 0; i < n; i++) anvil.release(ip);
        w.ips.clear();
        anvil.unlease(Math.max(0, w.lease));
        w.lease = 0;
        w.wants = false;
        w.revoking = false;
        // Another worker takes over accepting at once (this one restarts as an idle one).
        const accepted = w.accepting;
        w.accepting = false;
        if (accepted) {
          // The others' loads were measured with this one sharing the traffic.
          this.resetAcceptHolds();
          this.rebalance();
        }
      },
    }, this.deps.log);
    w.sup.start();
    return w;
  }

  // Counts a session of this worker from `ip` (the anvil counted it already).
  private countOpen(w: Worker, ip: string): void {
    w.ips.set(ip, (w.ips.get(ip) ?? 0) + 1);
  }

  // Uncounts a session of this worker from `ip`; false when it had none (nothing to uncount).
  private countRelease(w: Worker, ip: string): boolean {
    const n = w.ips.get(ip) ?? 0;
    if (n === 0) return false;
    this.deps.anvil.release(ip);
    if (n === 1) w.ips.delete(ip);
    else w.ips.set(ip, n - 1);
    return true;
  }

  /**
   * Starts or stops one worker accepting new connections when the load asks for it (acceptors.ts); with none
   * accepting (the one that did died), the first live one starts at once.
   */
  private rebalance(silent = false): void {
    if (this.stopped || this.deps.stopping()) return;
    const live = this.generation.filter((w) => this.ready(w));
    const change = nextAcceptChange(live.map((w) => ({ accepting: w.accepting, load: w.load })));
    const now = this.now();
    const due = change === null ? null : 'stop' in change ? 'stop' : live.some((w) => w.accepting) ? 'start' : 'first';
    if (due !== 'stop') this.quietSince = null;
    if (due !== 'start') this.busySince = null;
    if (change === null) return;
    // A start or a stop only once the load has stayed that way for a while.
    if (due === 'start' && !silent) {
      this.busySince ??= now;
      if (now - this.busySince < BUSY_HOLD_MS) return;
    } else if (due === 'stop') {
      this.quietSince ??= now;
      if (now - this.quietSince < QUIET_HOLD_MS) return;
    }
    this.busySince = null;
    this.quietSince = null;
    // The loads that called for it, for the log line.
    const loads = live.filter((w) => w.accepting).map((w) => w.load);
    // Every accepting worker's next report after this change tells the load with it.
    for (const w of live) w.load = null;
    this.changedAt = now;
    if ('start' in change) {
      const w = live[change.start]!;
      w.accepting = true;
      w.reportedAt = now;
      this.deps.handles.forEach((h, i) => w.sup.child!.send({ type: 'accept', index: i, name: h.name, display: h.display }, h.handle as Server));
    } else {
      const w = live[change.stop]!;
      w.accepting = false;
      w.sup.child!.send({ type: 'pause' });
      this.revoke(w);
    }
    this.deps.log.info({ event: 'acceptors', accepting: this.generation.filter((w) => w.accepting).length, workers: this.generation.length, loads });
  }

  // A worker whose process is alive and has every listening handle.
  private ready(w: Worker): boolean {
    const c = w.sup.child;
    return c !== null && c.connected && c.exitCode === null && c.signalCode === null && w.listening === this.deps.handles.length;
  }

  // Accepting workers that stopped reporting count as fully busy.
  private checkSilent(): void {
    const now = this.now();
    // Master itself was held up (its timers late): the reports queued meanwhile are read after this round.
    const late = now - this.lastCheck > 2 * LOAD_REPORT_MS;
    this.lastCheck = now;
    if (late) return;
    let silent = false;
    for (const w of this.generation) {
      if (w.accepting && this.ready(w) && now - w.reportedAt > SILENT_MS) {
        w.load = 1;
        silent = true;
      }
    }
    // Silence is a hold of its own (SILENT_MS): no busy hold on top.
    if (silent) this.rebalance(true);
  }

  // Forgets the loads and holds measured before the set of accepting workers changed other than by rebalance.
  private resetAcceptHolds(): void {
    for (const w of this.generation) w.load = null;
    this.busySince = null;
    this.quietSince = null;
    this.changedAt = this.now();
  }

  // Calls a worker's unused session slots back (it answers with a 'sessions' batch that returns them).
  private revoke(w: Worker): void {
    if (w.lease > 0 && !w.revoking && w.sup.child?.connected) {
      w.revoking = true;
      w.sup.child.send({ type: 'revoke' });
    }
  }

  // Leases: hands session slots to workers that asked while there is room, and calls them back near the limit.
  private balanceLeases(): void {
    const anvil = this.deps.anvil;
    // A retiring worker (reload) takes no new connections: its slots go back at once.
    for (const w of this.retiring) this.revoke(w);
    if (anvil.overLeased) {
      for (const w of this.generation) this.revoke(w);
      return;
    }
    if (this.deps.stopping()) return;
    // Only accepting workers admit sessions: the lease is shared among them.
    const chunk = anvil.leaseChunk(this.generation.filter((w) => w.accepting).length);
    if (chunk === 0) return;
    for (const w of this.generation) {
      if (!w.accepting || !w.wants || w.revoking || !w.sup.child?.connected) continue;
      const n = anvil.grant(w.lease, chunk);
      if (n === 0) continue;
      w.lease += n;
      w.wants = false;
      w.sup.child.send({ type: 'lease', n, chunk });
    }
  }

  // A message from the worker's current process.
  private onMessage(w: Worker, child: ChildProcess, m: WorkerMessage): void {
    const anvil = this.deps.anvil;
    switch (m.type) {
      case 'admit': {
        const verdict = this.deps.stopping() ? 'global' : anvil.admit(m.ip, m.exempt);
        if (verdict === 'ok') this.countOpen(w, m.ip);
        if (child.connected) child.send({ type: 'admit', id: m.id, verdict });
        this.balanceLeases();
        return;
      }
      case 'message':
        if (child.connected) child.send({ type: 'message', id: m.id, ok: m.kind === 'recipient' ? anvil.recipient(m.ip, m.exempt) : anvil.message(m.ip, m.exempt) });
        return;
      case 'sessions':
        this.onSessions(w, m);
        this.balanceLeases();
        return;
      case 'listening':
        w.listening++;
        if (w.listening === this.deps.handles.length) {
          w.reportedAt = this.now();
          w.load = null;
          w.ready();
          // A worker ready again after a restart may be the one to take over accepting.
          if (this.started) this.rebalance();
        }
        return;
      case 'load': {
        if (!w.accepting) return;
        const now = this.now();
        w.reportedAt = now;
        // A report that began before the last change measured the load before it.
        if (now - this.changedAt < LOAD_REPORT_MS) return;
        w.load = m.load;
        this.rebalance();
        return;
      }
      case 'listen-error':
        this.deps.listenFailed(m.display, m.code);
        return;
    }
  }

  /**
   * A worker's batch of session events since its last one: sessions it admitted with leased slots, sessions
   * that ended (`kept`: their slots stay with the worker, which may have admitted this batch's later sessions
   * on them already, so they count first), unused slots it gives back (after a revoke), and whether it wants
   * more.
   */
  private onSessions(w: Worker, m: Extract<WorkerMessage, { type: 'sessions' }>): void {
    const anvil = this.deps.anvil;
    const kept = m.kept ?? [];
    w.lease += kept.length;
    anvil.relet(kept.length);
    for (const ip of m.open) {
      if (w.lease <= 0) continue; // never leased: ignore (a worker cannot mint slots)
      w.lease--;
      anvil.openLeased(ip);
      this.countOpen(w, ip);
    }
    for (const ip of m.release) this.countRelease(w, ip);
    for (const ip of kept) {
      // Never counted here: it held no slot to keep.
      if (!this.countRelease(w, ip)) {
        w.lease--;
        anvil.unlease(1);
      }
    }
    if (m.returned > 0) {
      const n = Math.min(m.returned, w.lease);
      anvil.unlease(n);
      w.lease -= n;
    }
    if (m.revoked) w.revoking = false;
    if (m.want) w.wants = true;
  }
}
