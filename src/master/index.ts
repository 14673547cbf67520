// SPDX-License-Identifier: MIT
// master: binds the listening sockets, starts cleanup and the smtpd workers (as the service users when root),
// hands each worker the listening handles, runs the anvil, serves the control socket, restarts children,
// reloads on SIGHUP and drains on SIGTERM. It never accepts a connection and holds no mail.

import { mkdirSync, rmSync, writeFileSync, chownSync, statfs } from 'node:fs';
import type { Server } from 'node:net';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import type { Config } from '../config/index.ts';
import type { Logger } from '../log/index.ts';
import { parseDuration } from '../core/duration.ts';
import { Anvil } from '../policy/index.ts';
import { QueueStore, MESSAGE_STATES } from '../queue/index.ts';
import { EXIT } from '../core/exit.ts';
import { includePaths, readAliases } from '../lookup/index.ts';
import { closeInheritedFds, Supervised } from './children.ts';
import { Orphans } from './orphans.ts';
import { ensureCommandUser, ensureIdentities, secureSpool, type Identities } from './privilege.ts';
import { assertNotRunning, assertSafeDirs, bindListeners, bindPrivate, lockSpool, serveControl, StartError } from './startup.ts';
import { SmtpdWorkers } from './workers.ts';
import { CompileCache } from './compile-cache.ts';

export { StartError } from './startup.ts';

// How long a worker replaced by a reload may keep serving the sessions it already has.
const RETIRE_MS = 60 * 60_000;

/** What master needs from outside. */
export interface MasterDeps {
  readonly log: Logger;
  /** Path of src/main.ts, the entry every child runs. */
  readonly entry: string;
  /** Re-reads the config (for reload); throws ConfigError. */
  readonly reloadConfig: () => Config;
}


/** Starts Palisade; resolves with the exit code once it has stopped. */
export async function runMaster(deps: MasterDeps, initial: Config): Promise<number> {
  const log = deps.log;
  // A stop signal during start-up is kept and acted on once the children are up (the default action would
  // kill master alone and leave them to notice the lost channel).
  let earlySignal: NodeJS.Signals | null = null;
  const onEarlySignal = (sig: NodeJS.Signals) => {
    earlySignal ??= sig;
  };
  process.on('SIGTERM', onEarlySignal);
  process.on('SIGINT', onEarlySignal);
  closeInheritedFds();
  let cfg = initial;
  const store = new QueueStore(cfg.queue.dir);
  assertSafeDirs([cfg.server.data_dir, cfg.queue.dir]);
  // Held for the master's lifetime; released by the kernel when the process is gone.
  const spoolLock = lockSpool(cfg.queue.dir);
  mkdirSync(cfg.server.data_dir, { recursive: true, mode: 0o755 });
  await store.init();
  const created: string[] = [];
  let ids: Identities | null;
  try {
    ids = ensureIdentities(cfg.server.user, cfg.server.smtpd_user, created);
  } catch (e) {
    throw new StartError(`cannot set up service users: ${(e as Error).message}`, EXIT.software);
  }
  if (created.length > 0) log.info({ event: 'users-created', created });
  if (ids !== null) secureSpool(cfg.queue.dir, ids, ['tmp', ...MESSAGE_STATES]);

  const pidFile = join(cfg.server.data_dir, 'palisade.pid');
  assertNotRunning(pidFile);
  const controlPath = store.path('private', 'control');
  const cleanupPath = store.path('private', 'cleanup');

  // Bind every listener before starting anything: a taken port is exit 69.
  const handles = bindListeners(cfg.smtp.listen);

  // private/delivery: one listening Unix socket shared by every delivery worker (kernel balances jobs).
  const deliveryPath = store.path('private', 'delivery');
  const deliveryHandle = bindPrivate(deliveryPath, ids);
  // private/command: the command agent's socket, only with [local] allow_commands (decided at start).
  const commandsOn = cfg.local.allow_commands;
  const commandPath = store.path('private', 'command');
  if (!commandsOn) rmSync(commandPath, { force: true });
  let commandHandle: object | null = null;
  let commandIds: { uid: number; gid: number } | null = null;
  if (commandsOn) {
    // Commands run as command_user, switched to by the (root) command agent: without the privilege drop they
    // would run as root or as the queue's owner.
    if (ids === null) throw new StartError('local.allow_commands needs the privilege drop: start as root with server.user set', EXIT.config);
    try {
      const made: string[] = [];
      commandIds = ensureCommandUser(cfg.local.command_user, ids, made);
      if (made.length > 0) log.info({ event: 'users-created', created: made });
    } catch (e) {
      throw new StartError(`local.command_user: ${(e as Error).message}`, EXIT.config);
    }
    // Only the delivery agents (user) connect; the agent itself has the listening handle from master.
    commandHandle = bindPrivate(commandPath, ids);
  }
  mkdirSync(cfg.local.mailbox_dir, { recursive: true, mode: 0o700 });
  if (ids !== null) chownSync(cfg.local.mailbox_dir, ids.user.uid, ids.group);

  // Permission-model grants per role (docs/security.md): the code, plus exactly the role's own paths.
  const root = dirname(dirname(deps.entry));
  const code = [join(root, 'src'), join(root, 'node_modules'), join(root, 'package.json')];
  // Lookup files of the config in force when a child starts (a reload may name others): the recipient and
  // alias files, and for the delivery agents the :include: files the aliases name.
  const tables = () => [cfg.local.recipients, cfg.local.aliases].filter((t): t is string => typeof t === 'string' && t.startsWith('file:')).map((t) => t.slice(5));
  const includes = (): string[] => {
    if (cfg.local.aliases === '') return [];
    try {
      return includePaths(readAliases(cfg.local.aliases).entries);
    } catch {
      return []; // an unreadable alias file: the delivery agent logs it
    }
  };
  const grants = {
    smtpd: () => ({ read: [...code, ...tables()], write: [] }),
    cleanup: { read: [...code, cfg.queue.dir], write: [cfg.queue.dir] },
    qmgr: { read: [...code, cfg.queue.dir], write: [cfg.queue.dir] },
    // active/: a delivery agent marks the recipients it delivered in the queue file before answering qmgr.
    delivery: () => ({ read: [...code, cfg.queue.dir, cfg.local.mailbox_dir, '/etc/resolv.conf', ...tables(), ...includes()], write: [cfg.local.mailbox_dir, join(cfg.queue.dir, 'active')] }),
    // The only child that may start processes; it reads nothing but its code (the message comes over its socket).
    command: { read: code, write: [], childProcess: true },
  };

  // The children's compile cache, filled before the first of them starts (src/master/compile-cache.ts).
  const cache = new CompileCache(join(cfg.server.data_dir, 'compile-cache'), log);
  await cache.prime(deps.entry, code, ids ? [ids.user.uid, ids.smtpd.uid] : [], [cfg.queue.dir, cfg.local.mailbox_dir]);

  const anvil = new Anvil(anvilLimits(cfg));
  // Shared state the smtpd workers need at every MAIL: stress mode and a spool short of space.
  const flags = { stress: false, diskLow: false };
  const broadcast = () => workers.broadcastFlags();
  anvil.onStress = (on) => {
    flags.stress = on;
    log.warn({ event: 'stress', on, sessions: anvil.sessions, max_sessions: cfg.smtp.max_sessions });
    broadcast();
  };
  const diskTimer = setInterval(() => {
    anvil.sweep();
    statfs(cfg.queue.dir, (err, st) => {
      if (err) return;
      const free = st.bavail * st.bsize;
      const low = free < cfg.queue.min_free_space;
      if (low !== flags.diskLow) {
        flags.diskLow = low;
        log.warn({ event: low ? 'disk-low' : 'disk-ok', free_bytes: free, min_free_space: cfg.queue.min_free_space });
        broadcast();
      }
    });
  }, 1000);
  diskTimer.unref();
  let stopping = false;
  let failStart: ((e: Error) => void) | null = null;

  // ---- cleanup ----
  let cleanupReady: () => void = () => {};
  const cleanup = new Supervised({
    role: 'cleanup',
    grants: grants.cleanup,
    index: 0,
    entry: deps.entry,
    cache,
    ...(ids ? { uid: ids.user.uid, gid: ids.user.gid } : {}),
    onSpawn: (child) => {
      child.send({ type: 'init', role: 'cleanup', config: cfg, socket: cleanupPath, socketGroup: ids?.group ?? -1 });
      child.on('message', (m: { type: string; qids?: string[] }) => {
        if (m.type === 'ready') cleanupReady();
        else if (m.type === 'commit') {
          // A qmgr that is restarting finds the messages in its start-up scan: the notice is only a shortcut.
          const q = qmgr.child;
          if (q !== null && q.connected) q.send({ type: 'commit', qids: m.qids }, (e: Error | null) => void e);
        }
      });
    },
  }, log);

  // ---- qmgr ----
  let qmgrReady: () => void = () => {};
  let nextControl = 1;
  const controlWaiters = new Map<number, (a: unknown) => void>();
  const qmgr = new Supervised({
    role: 'qmgr',
    grants: grants.qmgr,
    index: 0,
    entry: deps.entry,
    cache,
    ...(ids ? { uid: ids.user.uid, gid: ids.user.gid } : {}),
    onSpawn: (child) => {
      // First the delivery agents say which jobs they still run for the qmgr before (all they run now):
      // this one must not deliver those messages again meanwhile. (Messages master sends it meanwhile wait in
      // the child until its init.)
      // Agents a reload retired are asked too: one may still run a job of a qmgr before the last.
      const agents = [...deliveryWorkers, ...[...retiringAgents].filter((sup) => sup.spec.role === 'delivery')];
      void orphans.collect(agents.map((sup) => ({ agent: sup, child: sup.child }))).then(() => {
        if (child.connected) child.send({ type: 'init', role: 'qmgr', config: cfg, cleanupPath, deliveryPath, busy: orphans.busy() });
      });
      child.on('message', (m: { type: string; id?: number; answer?: unknown }) => {
        if (m.type === 'ready') qmgrReady();
        else if (m.type === 'control-answer') {
          const w = controlWaiters.get(m.id!);
          controlWaiters.delete(m.id!);
          w?.(m.answer);
        }
      });
    },
    onExit: () => {
      for (const w of controlWaiters.values()) w({ ok: false, error: 'queue manager restarted; try again' });
      controlWaiters.clear();
    },
  }, log);
  const askQmgr = (cmd: object): Promise<unknown> => new Promise((resolve) => {
    const child = qmgr.child;
    if (child === null || !child.connected) return resolve({ ok: false, error: 'queue manager is not running; try again' });
    const id = nextControl++;
    controlWaiters.set(id, resolve);
    child.send({ type: 'control', id, cmd });
  });

  // ---- deliveries the previous qmgr left running (src/master/orphans.ts) ----
  const orphans = new Orphans<Supervised>((qid) => {
    const q = qmgr.child;
    if (q !== null && q.connected) q.send({ type: 'released', qid }, (e: Error | null) => void e);
  });

  // ---- delivery workers ----
  // 0 = a quarter of the CPUs, at least one. An agent is asynchronous (one takes many deliveries at once) and
  // jobs spread over more agents than the load needs find each agent's code and data cold: on two CPUs one
  // agent took 0.18-0.20 ms of CPU per message end to end at 50 sessions, two took 0.24 (bench/RESULTS.md).
  const deliveryCount = cfg.delivery.workers > 0 ? cfg.delivery.workers : Math.max(1, Math.ceil(cpus().length / 4));
  const deliveryWorkers: Supervised[] = [];
  const spawnDelivery = (index: number, onReady: () => void): Supervised => {
    const sup = new Supervised({
      role: 'delivery',
      grants: grants.delivery,
      index,
      entry: deps.entry,
      cache,
      ...(ids ? { uid: ids.user.uid, gid: ids.user.gid } : {}),
      onSpawn: (child) => {
        // A reload that turns commands off takes effect here; turning them on needs a restart (no agent).
        const commands = commandHandle !== null && cfg.local.allow_commands ? { commandPath } : {};
        child.send({ type: 'init', role: 'delivery', config: cfg, cleanupPath, ...commands });
        child.send({ type: 'listen', display: 'delivery' }, deliveryHandle as Server);
        child.on('message', (m: { type: string; qids?: string[]; qid?: string }) => {
          if (m.type === 'listening') onReady();
          else if (m.type === 'orphans') orphans.reported(sup, m.qids ?? []);
          else if (m.type === 'orphan-done') orphans.ended(sup, m.qid!);
        });
      },
      onExit: () => {
        orphans.gone(sup);
      },
    }, log);
    sup.start();
    return sup;
  };

  // ---- command agent (only with [local] allow_commands) ----
  const spawnCommandAgent = (): Supervised => new Supervised({
    role: 'command',
    grants: grants.command,
    index: 0,
    entry: deps.entry,
    cache,
    // Stays root (as Postfix's local(8)) to run each command as command_user; see src/delivery/command.ts.
    onSpawn: (child) => {
      child.send({ type: 'init', role: 'command', config: cfg, commandUser: commandIds });
      child.send({ type: 'listen' }, commandHandle as Server);
      child.on('message', (m: { type: string }) => {
        if (m.type === 'listening') commandReady();
      });
    },
  }, log);
  let commandAgent = commandHandle === null ? null : spawnCommandAgent();
  let commandReady: () => void = () => {};

  // Delivery and command agents a reload replaced: they take no new work and exit once what they run has
  // ended (a delivery; a command, which its agent stops at command_timeout). One still there after RETIRE_MS
  // (or command_timeout and a minute, if longer: a command is never left without its agent) is killed.
  const retiringAgents = new Set<Supervised>();
  const retireAgent = (sup: Supervised, msg: { type: string }): void => {
    retiringAgents.add(sup);
    const deadline = Math.max(RETIRE_MS, parseDuration(cfg.local.command_timeout)! + 60_000);
    void sup.stop(msg, deadline).then(() => retiringAgents.delete(sup));
  };

  // ---- smtpd workers ----
  const workerCount = cfg.smtp.workers > 0 ? cfg.smtp.workers : Math.max(1, cpus().length);
  const workers = new SmtpdWorkers({
    log, anvil, entry: deps.entry, cache, grants: grants.smtpd, ids: ids ? ids.smtpd : null, cleanupPath, handles, flags,
    stopping: () => stopping,
    listenFailed: (display, code) => {
      log.error({ event: 'listen-failed', listener: display, err: code });
      failStart?.(new StartError(`cannot listen on ${display}: ${code}`, EXIT.unavailable));
    },
  }, workerCount);

  const startupTimeout = (what: string) => new Promise<never>((_, reject) => {
    setTimeout(() => reject(new StartError(`${what} did not start within 30 s`, EXIT.software)), 30_000).unref();
  });
  const failed = new Promise<never>((_, reject) => (failStart = reject));

  try {
    await Promise.race([new Promise<void>((r) => { cleanupReady = r; cleanup.start(); }), startupTimeout('cleanup'), failed]);
    cleanupReady = () => {};
    const agent = commandAgent;
    if (agent !== null) {
      await Promise.race([new Promise<void>((r) => { commandReady = r; agent.start(); }), startupTimeout('command agent'), failed]);
      commandReady = () => {};
    }
    await Promise.race([
      Promise.all(Array.from({ length: deliveryCount }, (_, i) => new Promise<void>((r) => { deliveryWorkers.push(spawnDelivery(i, r)); }))),
      startupTimeout('delivery'),
      failed,
    ]);
    await Promise.race([new Promise<void>((r) => { qmgrReady = r; qmgr.start(); }), startupTimeout('qmgr'), failed]);
    qmgrReady = () => {};
    await Promise.race([workers.start(cfg), startupTimeout('smtpd'), failed]);
  } catch (e) {
    stopping = true;
    await workers.abort();
    await qmgr.stop({ type: 'stop', deadlineMs: 0 }, 2000);
    await Promise.all(deliveryWorkers.map((d) => d.stop({ type: 'drain' }, 2000)));
    await commandAgent?.stop({ type: 'drain' }, 2000);
    await cleanup.stop({ type: 'stop' }, 2000);
    throw e;
  }

  writeFileSync(pidFile, `${process.pid}\n`);
  const control = await serveControl(controlPath, ids, (cmd) => handleControl(cmd));
  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));

  async function shutdown(reason: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    const drainMs = parseDuration(cfg.server.drain_timeout)!;
    log.info({ event: 'stopping', reason, drain_timeout_ms: drainMs });
    clearInterval(diskTimer);
    await workers.stop(drainMs);
    // Deliveries in flight may finish (they need cleanup for DSNs); the rest repeat after restart.
    await qmgr.stop({ type: 'stop', deadlineMs: drainMs }, drainMs + 5000);
    await Promise.all([...deliveryWorkers, ...retiringAgents].map((d) => d.stop({ type: 'drain' }, 5000)));
    await commandAgent?.stop({ type: 'drain' }, 5000);
    await cleanup.stop({ type: 'stop' }, 10_000);
    control.close();
    rmSync(controlPath, { force: true });
    rmSync(pidFile, { force: true });
    (spoolLock as { close(): void }).close();
    log.info({ event: 'stopped' });
    resolveDone(EXIT.ok);
  }

  let reloading = false;
  async function reload(): Promise<{ ok: boolean; error?: string }> {
    if (stopping || reloading) return { ok: false, error: 'busy' };
    reloading = true;
    try {
      let next: Config;
      try {
        next = deps.reloadConfig();
      } catch (e) {
        log.error({ event: 'reload-failed', err: (e as Error).message });
        return { ok: false, error: (e as Error).message };
      }
      if (JSON.stringify(next.smtp.listen) !== JSON.stringify(cfg.smtp.listen) || next.queue.dir !== cfg.queue.dir) {
        log.warn({ event: 'reload-partial', note: 'listen addresses and queue.dir change only on restart' });
      }
      if (next.local.allow_commands && commandHandle === null) log.warn({ event: 'reload-partial', note: 'local.allow_commands = true takes effect on restart' });
      if (commandHandle !== null && next.local.command_user !== cfg.local.command_user) log.warn({ event: 'reload-partial', note: 'local.command_user changes only on restart' });
      cfg = { ...next, smtp: { ...next.smtp, listen: cfg.smtp.listen }, queue: { ...next.queue, dir: cfg.queue.dir } };
      anvil.setLimits(anvilLimits(cfg));
      const drainMs = parseDuration(cfg.server.drain_timeout)!;
      // New workers take new connections. Established sessions are not dropped (as Postfix's reload): the old
      // workers stop listening and exit once their clients are done; only a session still there after
      // RETIRE_MS is drained.
      await workers.replace(cfg, RETIRE_MS, drainMs);
      if (stopping) return { ok: false, error: 'stopping' };
      cleanup.child?.send({ type: 'config', config: cfg });
      // qmgr and the delivery agents start over with the new config: qmgr lets its deliveries finish for up to
      // drain_timeout; the new qmgr picks the queue up from disk, leaving alone the messages whose deliveries
      // still run (src/master/orphans.ts). New agents take the new jobs (the listening sockets stay open in
      // master meanwhile); the old ones finish theirs and exit, so a long command is not cut short.
      await qmgr.restart({ type: 'stop', deadlineMs: drainMs }, drainMs + 5000);
      // A shutdown that began meanwhile stops the agents there are; none are started for it to miss.
      if (stopping) return { ok: false, error: 'stopping' };
      const oldAgents = deliveryWorkers.splice(0);
      for (let i = 0; i < deliveryCount; i++) deliveryWorkers.push(spawnDelivery(i, () => {}));
      for (const d of oldAgents) retireAgent(d, { type: 'drain' });
      if (commandAgent !== null) {
        const old = commandAgent;
        commandAgent = spawnCommandAgent();
        commandAgent.start();
        retireAgent(old, { type: 'retire' });
      }
      log.info({ event: 'reloaded', source: cfg.source });
      return { ok: true };
    } finally {
      reloading = false;
    }
  }

  async function handleControl(cmd: { cmd?: string }): Promise<unknown> {
    switch (cmd.cmd) {
      case 'status':
        return { ok: true, pid: process.pid, sessions: anvil.sessions, leased: anvil.leasedSlots, stress: flags.stress, disk_low: flags.diskLow, workers: workers.size, qmgr: await askQmgr({ cmd: 'status' }) };
      case 'stop':
        setImmediate(() => void shutdown('control'));
        return { ok: true };
      case 'reload':
        return reload();
      case 'queue':
        return askQmgr((cmd as { op?: object }).op ?? {});
      default:
        return { ok: false, error: `unknown command ${String(cmd.cmd)}` };
    }
  }

  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGHUP', () => void reload());
  process.off('SIGTERM', onEarlySignal);
  process.off('SIGINT', onEarlySignal);
  // Only now: whoever waits for the ready line may signal at once, and the handlers are in place.
  log.child({}, { level: 'info' }).info({ event: 'ready', listeners: { smtp: handles.map((h) => h.display) }, workers: workerCount, queue: cfg.queue.dir });
  if (earlySignal !== null) void shutdown(earlySignal);
  return done;
}

function anvilLimits(cfg: Config) {
  return {
    maxSessions: cfg.smtp.max_sessions,
    maxSessionsPerIp: cfg.smtp.max_sessions_per_ip,
    connectionRatePerIp: cfg.smtp.max_connection_rate_per_ip,
    messageRatePerIp: cfg.smtp.max_message_rate_per_ip,
    recipientRatePerIp: cfg.smtp.max_recipient_rate_per_ip,
    stressAt: cfg.smtp.stress_threshold,
  };
}
