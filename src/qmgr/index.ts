// SPDX-License-Identifier: MIT
// qmgr: the scheduler. Takes committed messages from incoming/ into a bounded active set, groups recipients
// by destination into jobs for the delivery agents, records each outcome in the queue file, retries deferred
// recipients with exponential backoff, enforces the queue lifetime in every state, sends DSNs (failure,
// delay, success), and obeys hold/release/delete/requeue/flush.
// Must not: read message bodies into memory or talk to remote hosts itself.

import { promises as fsp, renameSync } from 'node:fs';
import type { Config } from '../config/index.ts';
import type { Logger } from '../log/index.ts';
import type { DeliveryJob, JobResult, RecipientResult } from '../core/delivery.ts';
import { parseDuration } from '../core/duration.ts';
import { RequestPool, submit } from '../ipc/index.ts';
import { QueueStore, QUEUE_ID, recipientRecords, type MessageState, type StateRecord } from '../queue/index.ts';
import { buildDsn } from '../bounce/index.ts';
import { createRouter } from './route.ts';
import { Destinations, destinationTable, type QueuedJob } from './destinations.ts';
import { dsnLists, dsnRecipient, expire, messageOf, retryDelay, type Msg } from './message.ts';
import { classify, compileOverrides } from '../core/classify.ts';
import { createControl, type ControlAnswer, type QmgrCommand } from './control.ts';

/** What qmgr needs from outside. */
export interface QmgrDeps {
  readonly log: Logger;
  readonly store: QueueStore;
  /** private/delivery: the delivery agents' shared socket. */
  readonly deliveryPath: string;
  /** private/cleanup: where DSNs are injected. */
  readonly cleanupPath: string;
  readonly now?: () => number;
  /** Messages a delivery agent is still delivering for the previous qmgr (it died): loaded once released. */
  readonly busy?: readonly string[];
}

export type { QmgrCommand } from './control.ts';

/** A running queue manager. */
export interface Qmgr {
  start(): Promise<void>;
  /** cleanup committed `qid` to incoming/. */
  notify(qid: string): void;
  /** The deliveries the previous qmgr left running for `qid` have ended: its records say what is left. */
  release(qid: string): void;
  control(c: QmgrCommand): Promise<ControlAnswer>;
  /** Stops scheduling and waits for deliveries in flight (at most `ms`). */
  stop(ms: number): Promise<void>;
}

/** Creates the queue manager. */
export function createQmgr(deps: QmgrDeps, cfg: Config): Qmgr {
  const log = deps.log;
  const store = deps.store;
  const now = deps.now ?? Date.now;
  const route = createRouter(cfg.transport, new Set(cfg.local.domains));
  const retryMin = parseDuration(cfg.queue.retry_min)!;
  const retryMax = parseDuration(cfg.queue.retry_max)!;
  const lifetime = parseDuration(cfg.queue.lifetime)!;
  const delayWarning = parseDuration(cfg.queue.delay_warning)!;
  const scanMs = parseDuration(cfg.queue.scan_interval)!;
  const overrides = compileOverrides(cfg.delivery.reply_overrides);
  const perDestination = destinationTable(cfg.delivery.destinations);
  const dests = new Destinations({ initial: cfg.delivery.initial_concurrency, max: cfg.delivery.concurrency, global: cfg.delivery.max_parallel, deadMs: retryMin, perDestination }, now);
  const active = new Map<string, Msg>();
  /** Deferred messages not in memory: id → next retry (ms). */
  const deferred = new Map<string, number>();
  let stopping = false;
  /** Messages still being delivered for the previous qmgr: not loaded until released. */
  const busy = new Set(deps.busy ?? []);
  /** Messages in active/ (left by a crash, or released) waiting for room in the active set. */
  const waitingActive = new Set<string>();
  let scanTimer: NodeJS.Timeout | null = null;
  let scanning = false;
  let idle: (() => void) | null = null;
  const loading = new Set<string>();
  /** Messages whose first attempt, lost with its delivery agent, was repeated at once (finishRound). */
  const promptRetried = new Set<string>();

  function inFlightTotal(): number {
    let n = 0;
    for (const m of active.values()) n += m.inFlight;
    return n;
  }

  // ---- loading ---------------------------------------------------------------

  // `expireOnly`: a held message past its lifetime bounces without another delivery attempt (it was held).
  // Resolves true when the message was taken into the active set.
  async function load(id: string, from: MessageState, expireOnly = false): Promise<boolean> {
    if (stopping || active.has(id) || loading.has(id)) return false;
    if (active.size >= cfg.queue.active_limit) return false; // waits on disk; the next scan takes it
    loading.add(id);
    try {
      if (from !== 'active') {
        try {
          // No fsync needed: after a crash the file is in one directory or the other, never lost. Synchronous:
          // a rename is microseconds, a thread-pool hand-off costs more.
          renameSync(store.path(from, id), store.path('active', id));
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          // Not in `from`. Usually a stale scan entry for a message handled meanwhile (leave it alone). But a
          // round that failed midway (finishRound's catch) leaves the file in active/ while it is tracked as
          // deferred: nobody else owns it (we hold its `loading` slot), so take it from there instead of
          // retrying the rename forever.
          const where = await store.locate(id);
          if (where === null) deferred.delete(id);
          if (where !== 'active') return false;
        }
      }
      let q;
      try {
        q = await store.read('active', id);
      } catch (e) {
        // Gone meanwhile (a stale listing at start-up: the message was delivered and removed): nothing to do.
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
        log.error({ event: 'corrupt', qid: id, err: (e as Error).message });
        await fsp.rename(store.path('active', id), store.path('corrupt', id)).catch(() => {});
        return false;
      }
      const m = messageOf(id, q);
      active.set(id, m);
      deferred.delete(id);
      if (expireOnly) void finishRound(m);
      else schedule(m);
      return true;
    } finally {
      loading.delete(id);
    }
  }

  // ---- scheduling --------------------------------------------------------------

  function schedule(m: Msg): void {
    const todo = m.rcpts.map((r, i) => ({ r, i })).filter(({ r }) => r.status === 'pending' || r.status === 'deferred');
    if (todo.length === 0) {
      void finishRound(m);
      return;
    }
    const groups = new Map<string, { d: ReturnType<typeof route>; idx: number[] }>();
    const queued: QueuedJob[] = [];
    for (const { r, i } of todo) {
      const d = route(r.address);
      const g = groups.get(d.key) ?? { d, idx: [] };
      g.idx.push(i);
      groups.set(d.key, g);
    }
    for (const { d, idx } of groups.values()) {
      const perJob = perDestination(d.key).max_recipients ?? cfg.delivery.max_recipients;
      for (let k = 0; k < idx.length; k += perJob) {
        const part = idx.slice(k, k + perJob);
        const job: DeliveryJob = {
          qid: m.id,
          file: store.path('active', m.id),
          route: d.route,
          nexthop: d.key,
          sender: m.env.sender,
          recipients: part.map((i) => ({ index: i, address: m.rcpts[i]!.address, ...(m.rcpts[i]!.notify ? { notify: m.rcpts[i]!.notify } : {}), ...(m.rcpts[i]!.orcpt ? { orcpt: m.rcpts[i]!.orcpt } : {}) })),
          smtputf8: m.env.smtputf8,
          eightBit: m.eightBit,
          message: { offset: m.offset, length: m.length },
          ...(m.env.ret ? { ret: m.env.ret } : {}),
          ...(m.env.envid !== undefined ? { envid: m.env.envid } : {}),
        };
        const started = now();
        queued.push({
          dest: d.key,
          run: async () => {
            m.tried = true;
            const res = await dispatch(job);
            await recordResults(m, job, res.results, started, res.agentLost === true);
            return res.destinationFailed ? (res.results.find((r) => r.reply !== '')?.reply ?? '') : null;
          },
          fail: (reason) => {
            void recordResults(m, job, job.recipients.map((r) => ({ index: r.index, status: 'deferred', dsn: '4.4.1', reply: reason, relay: '' })), started);
          },
        });
      }
    }
    // Count every job before handing any over: a dead destination fails its job synchronously, and the round
    // must not finish (moving the file out of active/) while the other destinations' jobs are still to run.
    m.inFlight += queued.length;
    for (const q of queued) dests.add(q);
  }

  // Connections to the delivery agents, kept open between jobs (see RequestPool).
  const agents = new RequestPool(deps.deliveryPath);

  // Sends a job to a delivery agent and waits for its answer. A job lost with its agent (`agentLost`: the agent
  // died first) is deferred, except for recipients the agent had marked sent in the queue file before it died:
  // those were delivered, and this round must not bounce them at expiry or warn of a delay for them.
  async function dispatch(job: DeliveryJob): Promise<JobResult & { agentLost?: true }> {
    const r = await agents.ask(job);
    if (!(r instanceof Error)) return r as JobResult;
    let marks: Map<number, StateRecord> | null = null;
    try {
      marks = recipientRecords((await store.read('active', job.qid)).records);
    } catch {
      // Unreadable: all deferred, and the next load reads the marks.
    }
    return {
      results: job.recipients.map((x): RecipientResult => {
        const mark = marks?.get(x.index);
        if (mark?.state === 'sent') return { index: x.index, status: 'sent', dsn: mark.dsn, reply: mark.reply, relay: '', ...(mark.relayed ? { relayed: mark.relayed } : {}) };
        return { index: x.index, status: 'deferred', dsn: '4.3.0', reply: `delivery agent: ${r.message}`, relay: '' };
      }),
      destinationFailed: false,
      agentLost: true,
    };
  }

  // `lost`: the job was lost with its delivery agent (its deferrals are that, not a server's answer).
  async function recordResults(m: Msg, job: DeliveryJob, results: readonly RecipientResult[], started: number, lost = false): Promise<void> {
    const t = now();
    const lines: StateRecord[] = [];
    if (lost) m.agentLost = true;
    for (const res0 of results) {
      const res = classify(res0, overrides);
      const r = m.rcpts[res.index];
      if (r === undefined) continue;
      if (res.status === 'deferred' && !lost) m.deferredOtherwise = true;
      r.status = res.status;
      r.dsn = res.dsn;
      r.reply = res.reply;
      r.relay = res.relay;
      if (res.relayed) r.relayed = res.relayed;
      else delete r.relayed;
      if (res.status === 'bounced' && res.targets) r.targets = res.targets;
      else delete r.targets;
      r.at = t;
      r.report = true;
      log.info({
        event: 'delivery', qid: m.id, to: r.address, relay: res.relay || job.nexthop, delay: Math.round((t - m.arrival) / 100) / 10,
        attempt_s: Math.round((t - started) / 100) / 10, dsn: res.dsn, status: res.status, reply: res.reply,
      });
      lines.push({ rcpt: res.index, state: res.status, dsn: res.dsn, reply: res.reply, at: new Date(t).toISOString(), ...(r.targets ? { targets: r.targets } : {}) });
    }
    m.inFlight--;
    m.unsaved.push(...lines);
    if (m.inFlight > 0) return;
    await finishRound(m);
  }

  // Writes the round's outcomes, after its DSNs went out: a crash in between repeats an attempt (and at worst
  // a DSN) but never loses one. A full disk must not stop the round: without records a recipient is retried.
  async function saveRound(m: Msg, extra: readonly StateRecord[] = []): Promise<void> {
    const recs = [...m.unsaved, ...extra];
    m.unsaved = [];
    try {
      await appendRecords(m, recs);
    } catch (e) {
      log.error({ event: 'qmgr-error', qid: m.id, err: (e as Error).message });
    }
  }

  function appendRecords(m: Msg, recs: readonly StateRecord[]): Promise<void> {
    return store.appendStates(m.state, m.id, recs);
  }

  // After every job of a round has answered: DSNs, then remove, hold or defer the message.
  async function finishRound(m: Msg): Promise<void> {
    try {
      if (m.pendingAction === 'delete') {
        await store.remove(m.state, m.id);
        active.delete(m.id);
        log.info({ event: 'deleted', qid: m.id });
        return;
      }
      const t = now();
      const expired = t - m.arrival >= lifetime;
      if (expired) {
        for (const r of expire(m, t, cfg.queue.lifetime)) {
          log.info({ event: 'delivery', qid: m.id, to: r.address, relay: 'none', delay: Math.round((t - m.arrival) / 100) / 10, dsn: r.dsn, status: 'bounced', reply: r.reply });
        }
      }
      if (!(await sendDsns(m, t))) {
        // The DSN could not be injected (cleanup down): the recipients it covers stay unfinished in the file,
        // so the next round bounces them again and sends the DSN then.
        for (const [i, r] of m.rcpts.entries()) {
          if (r.report && r.status === 'bounced') {
            r.status = 'deferred';
            m.unsaved.push({ rcpt: i, state: 'deferred', dsn: r.dsn, reply: r.reply, at: new Date(r.at || t).toISOString() });
          }
        }
        await toDeferred(m, t + retryMin);
        return;
      }
      if (m.rcpts.every((r) => r.status === 'sent' || r.status === 'bounced')) {
        // Finished: the file goes, so its outcomes need not be written.
        m.unsaved = [];
        // Synchronous, as the rename into active/ is: an unlink may wait on the file system (seen: 0.4 ms once),
        // but the thread pool's hand-off cost more on every message (two wake-ups, one preempting qmgr).
        store.removeSync(m.state, m.id);
        active.delete(m.id);
        promptRetried.delete(m.id);
        log.info({ event: 'removed', qid: m.id, sent: m.rcpts.filter((r) => r.status === 'sent').length, bounced: m.rcpts.filter((r) => r.status === 'bounced').length });
        return;
      }
      if (m.pendingAction === 'hold') {
        await saveRound(m);
        await moveTo(m, 'hold');
        active.delete(m.id);
        log.info({ event: 'held', qid: m.id });
        return;
      }
      if (m.tried || m.attempts === 0) m.attempts++;
      m.tried = false;
      // The prompt retry of a first attempt lost with its agent is remembered here too: should the attempt's
      // record fail to reach the file (a full disk), the count read back would allow it again.
      const { delay, prompt } = retryDelay(m, promptRetried.has(m.id), retryMin, retryMax);
      if (prompt) {
        if (promptRetried.size >= cfg.queue.active_limit) promptRetried.clear();
        promptRetried.add(m.id);
      }
      m.agentLost = false;
      m.deferredOtherwise = false;
      await toDeferred(m, t + delay);
    } catch (e) {
      log.error({ event: 'qmgr-error', qid: m.id, err: (e as Error).message });
      active.delete(m.id);
      deferred.set(m.id, now() + retryMin);
    } finally {
      if (active.size === 0 && inFlightTotal() === 0) idle?.();
    }
  }

  async function toDeferred(m: Msg, next: number): Promise<void> {
    const iso = new Date(next).toISOString();
    const recs: StateRecord[] = [];
    for (const [i, r] of m.rcpts.entries()) {
      if (r.status === 'deferred' && r.report) recs.push({ rcpt: i, state: 'deferred', dsn: r.dsn, reply: r.reply, at: new Date(r.at).toISOString(), next: iso, attempts: m.attempts });
      r.report = false;
    }
    // The next-retry time lives in the file, so it survives restarts.
    await saveRound(m, recs);
    await moveTo(m, 'deferred');
    active.delete(m.id);
    deferred.set(m.id, next);
  }

  async function moveTo(m: Msg, to: MessageState): Promise<void> {
    if (m.state === to) return;
    await store.move(m.id, m.state, to);
    m.state = to;
  }

  // Sends the DSNs this round calls for; false when injection failed (retry later).
  async function sendDsns(m: Msg, t: number): Promise<boolean> {
    const { failed, success, delayed } = dsnLists(m, t, delayWarning);
    for (const [list, action] of [[failed, 'failed'], [success, 'delivered'], [delayed, 'delayed']] as const) {
      if (list.length === 0) continue;
      if (m.env.sender === '') {
        // Never a bounce for a bounce: a failed DSN is kept for the postmaster in hold/.
        if (action === 'failed') {
          log.warn({ event: 'double-bounce', qid: m.id, note: 'undeliverable message from <>; kept in hold for the postmaster' });
          m.pendingAction = 'hold';
          for (const r of failed) r.status = 'deferred';
          // The file must say so too (after the round's records), or a release would find them final.
          m.unsaved.push(...failed.map((r) => ({ rcpt: m.rcpts.indexOf(r), state: 'deferred' as const, dsn: r.dsn, reply: r.reply, at: new Date(r.at || t).toISOString() })));
        }
        continue;
      }
      const recipients = list.flatMap((r) => dsnRecipient(r, action, t, m.arrival + lifetime));
      const dsn = buildDsn({
        hostname: cfg.server.hostname, qid: m.id, sender: m.env.sender, ...(m.env.envid !== undefined ? { envid: m.env.envid } : {}),
        ...(m.env.ret ? { ret: m.env.ret } : {}), arrival: new Date(m.arrival), recipients,
        file: store.path(m.state, m.id), offset: m.offset, length: m.length, eightBit: m.eightBit,
      })!;
      const res = await submit(deps.cleanupPath, dsn.envelope, dsn.parts);
      if (!res.ok) {
        log.error({ event: 'dsn-failed', qid: m.id, action, err: `${res.code} ${res.text}` });
        return false;
      }
      log.info({ event: 'dsn', qid: m.id, dsn_qid: res.qid, action, to: m.env.sender, recipients: recipients.length });
      if (action === 'delayed') {
        m.warned = true;
        await appendRecords(m, [{ warned: true, at: new Date(t).toISOString() } as unknown as StateRecord]);
      }
    }
    for (const r of m.rcpts) if (r.status !== 'deferred') r.report = false;
    return true;
  }

  // ---- scans -------------------------------------------------------------------

  async function scan(): Promise<void> {
    if (scanning || stopping) return;
    scanning = true;
    try {
      for (const id of waitingActive) {
        if (active.size >= cfg.queue.active_limit) break;
        waitingActive.delete(id);
        await load(id, 'active');
      }
      for (const id of await readIds('incoming')) await load(id, 'incoming');
      const t = now();
      for (const [id, next] of deferred) if (next <= t) await load(id, 'deferred');
      await expireHeld(t);
    } catch (e) {
      log.error({ event: 'scan-error', err: (e as Error).message });
    } finally {
      scanning = false;
    }
  }

  async function readIds(state: MessageState): Promise<string[]> {
    try {
      // In incoming/, only committed files: cleanup's reserved files are there before they hold a message.
      return (await fsp.readdir(store.path(state))).filter((n) => QUEUE_ID.test(n) && store.committed(state, n)).sort();
    } catch {
      return [];
    }
  }

  // Held messages obey the lifetime too: past it they bounce (5.4.7), without a delivery attempt.
  async function expireHeld(t: number): Promise<void> {
    for (const id of await readIds('hold')) {
      try {
        const q = await store.read('hold', id);
        if (q.envelope.sender !== '' && t - Date.parse(q.envelope.arrival) >= lifetime) await load(id, 'hold', true);
      } catch {
        /* raced with release/delete */
      }
    }
  }

  // ---- control -------------------------------------------------------------------

  const control = createControl({
    log, store, dests, active, deferred, busy, scan, load: (id, from) => load(id, from),
    finish: (id) => finishRound(active.get(id)!),
  });

  return {
    async start() {
      // Messages left active by a crash go first: their records say what is still to do. One a delivery agent
      // is still delivering (for the qmgr that died) waits for that delivery's mark in its file: release().
      for (const id of await readIds('active')) {
        if (busy.has(id)) continue;
        if (active.size >= cfg.queue.active_limit) waitingActive.add(id);
        else await load(id, 'active');
      }
      for (const id of await readIds('deferred')) {
        try {
          const q = await store.read('deferred', id);
          let next = 0;
          for (const r of q.records) if (r.state === 'deferred' && r.next) next = Math.max(next, Date.parse(r.next));
          deferred.set(id, next);
        } catch {
          deferred.set(id, 0);
        }
      }
      await scan();
      scanTimer = setInterval(() => void scan(), Math.max(100, Math.min(scanMs, 60_000)));
    },
    notify(qid: string) {
      if (QUEUE_ID.test(qid)) void load(qid, 'incoming').catch((e: Error) => log.error({ event: 'load-error', qid, err: e.message }));
    },
    release(qid: string) {
      if (!busy.delete(qid) || stopping) return;
      log.info({ event: 'resumed', qid, note: 'the delivery the previous qmgr left running has ended' });
      if (active.size >= cfg.queue.active_limit) waitingActive.add(qid);
      else void load(qid, 'active').catch((e: Error) => log.error({ event: 'load-error', qid, err: e.message }));
    },
    control,
    async stop(ms: number) {
      stopping = true;
      if (scanTimer) clearInterval(scanTimer);
      if (inFlightTotal() === 0) return;
      await new Promise<void>((r) => {
        idle = r;
        setTimeout(r, ms).unref();
      });
    },
  };
}

