// SPDX-License-Identifier: MIT
// main: the only wiring point. `palisade <command>` for operators, `main.ts child <role>` for the processes
// master starts. Loads config, creates components with their dependencies, installs signal handlers.

import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import { chmodSync, chownSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Config } from './config/index.ts';
import { createLogger } from './log/index.ts';
import type { GateMessage, SessionGate } from './smtpd/index.ts';
import type { QmgrCommand } from './qmgr/index.ts';
import { LOAD_REPORT_MS } from './master/acceptors.ts';

// Components are imported when a process needs them: a child loads only its own role's code (not the CLI,
// the config schema and its validator, master or the other roles), which keeps each process smaller and
// quicker to restart.

const ENTRY = fileURLToPath(import.meta.url);

async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'child') {
    await runChild(argv[1] ?? '');
    return -1; // a child stays alive until told to stop
  }
  const { runCli } = await import('./cli/index.ts');
  return runCli(argv, { start, smtpOnStdio });
}

// sendmail -bs: one SMTP session on stdin/stdout, served by smtpd's own state machine in this process over a
// loopback connection it makes to itself (a local submission, trusted like any other), injecting through
// cleanup. Nothing is logged: stdout is the session.
async function smtpOnStdio(cfg: Config): Promise<number> {
  const { createSmtpd } = await import('./smtpd/index.ts');
  const { QueueStore } = await import('./queue/index.ts');
  const gate: SessionGate = { flags: { stress: false, diskLow: false }, admit: () => 'ok', release: () => {}, message: () => Promise.resolve(true) };
  const smtpd = createSmtpd({ log: createLogger('sendmail', 'silent'), gate, cleanupPath: new QueueStore(cfg.queue.dir).path('private', 'cleanup') }, cfg);
  const server = createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  // smtpd sees only our own connection: the listener takes one, checks it is ours, and closes.
  const front = Object.assign(new EventEmitter(), { close: () => {} }) as unknown as Server;
  smtpd.attach(front);
  const sock = connect((server.address() as AddressInfo).port, '127.0.0.1');
  server.on('connection', (s: Socket) => {
    const ours = () => {
      if (s.remotePort !== sock.localPort) return s.destroy();
      server.close();
      front.emit('connection', s);
    };
    // Our end's port is known once its connect has completed, which may come after the accept.
    if (sock.connecting) sock.once('connect', ours);
    else ours();
  });
  process.stdin.pipe(sock);
  sock.pipe(process.stdout, { end: false });
  // After the 221 smtpd closes at once; input still coming (or a reset) is not an error of the session.
  sock.on('error', () => {});
  await new Promise<void>((resolve) => sock.on('close', () => resolve()));
  process.stdin.unpipe(sock);
  server.close();
  // The session is over: flush what it wrote, then go (idle connections to cleanup would keep the process).
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  process.exit(0);
}

// palisade start: master in the foreground until it has stopped.
async function start(cfg: Config, configFile: string | null): Promise<number> {
  const { runMaster, StartError } = await import('./master/index.ts');
  const { loadConfig } = await import('./config/index.ts');
  const log = createLogger('master', cfg.log.level);
  try {
    process.exit(await runMaster({ log, entry: ENTRY, reloadConfig: () => loadConfig(configFile) }, cfg));
  } catch (e) {
    if (e instanceof StartError) {
      log.fatal({ event: 'start-failed', err: e.message });
      process.stderr.write(`palisade: ${e.message}\n`);
      process.exit(e.exitCode);
    }
    throw e;
  }
}

// ---- children --------------------------------------------------------------

interface InitMessage {
  type: 'init';
  role: string;
  config: Config;
  socket?: string;
  socketGroup?: number;
  cleanupPath?: string;
  deliveryPath?: string;
  commandPath?: string;
  /** qmgr: messages delivery agents are still delivering for the qmgr before it. */
  busy?: string[];
  /** command agent: the user commands run as. */
  commandUser?: { uid: number; gid: number };
}

// Master's messages that arrive before the role has loaded its code and installed its handler wait here, in
// order (an event without a listener would be lost).
type MasterMessage = { type: string; [k: string]: unknown };
type Handler = (m: never, handle?: unknown) => void;
let early: [MasterMessage, unknown][] = [];
let initWaiter: ((m: InitMessage) => void) | null = null;
function holdEarly(m: MasterMessage, handle: unknown): void {
  if (m?.type === 'init' && initWaiter !== null) {
    initWaiter(m as unknown as InitMessage);
    initWaiter = null;
  } else early.push([m, handle]);
}

function firstMessage(): Promise<InitMessage> {
  return new Promise((resolve) => {
    initWaiter = resolve;
    process.on('message', holdEarly);
  });
}

/** Installs a role's message handler and hands it what arrived meanwhile. */
function onMasterMessage(handler: Handler): void {
  process.off('message', holdEarly);
  const h = handler as (m: MasterMessage, handle?: unknown) => void;
  process.on('message', h);
  const held = early;
  early = [];
  for (const [m, handle] of held) h(m, handle);
}

async function runChild(role: string): Promise<void> {
  if (typeof process.send !== 'function') throw new Error('child roles run only under master');
  if (role === 'prime') return prime();
  // Master gone = we go too (no orphans).
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGHUP', () => {});
  process.on('SIGINT', () => {});
  const init = await firstMessage();
  if (role === 'cleanup') return runCleanup(init);
  if (role === 'smtpd') return runSmtpd(init);
  if (role === 'qmgr') return runQmgr(init);
  if (role === 'delivery') return runDelivery(init);
  if (role === 'command') return runCommandAgent(init);
  throw new Error(`unknown child role ${role}`);
}

// The compile cache's primer (src/master/compile-cache.ts): loads every role's modules with the cache on
// (NODE_COMPILE_CACHE), writes it out, and exits.
async function prime(): Promise<void> {
  await Promise.all([
    import('./cleanup/index.ts'), import('./queue/index.ts'), import('./smtpd/index.ts'), import('./qmgr/index.ts'),
    import('./delivery/index.ts'), import('./dns/index.ts'), import('./core/duration.ts'),
  ]);
  const { flushCompileCache } = await import('node:module');
  flushCompileCache();
  process.exit(0);
}

// Session and commit notices to master are gathered this long (a few per message otherwise, each a wake-up of
// master): master's session count may lag by this much, which leased slots already allow for, and delivery of
// a new message starts this much later.
const NOTICE_BATCH_MS = 5;

async function runCleanup(init: InitMessage): Promise<void> {
  const cfg = init.config;
  const { createCleanup } = await import('./cleanup/index.ts');
  const { QueueStore } = await import('./queue/index.ts');
  const log = createLogger('cleanup', cfg.log.level, { batched: true });
  const store = new QueueStore(cfg.queue.dir);
  // The only writer of tmp/ and of reserved files: whatever of theirs holds no complete message was never
  // acknowledged.
  const { removed, restored, unreadable } = await store.recover();
  for (const id of removed) log.warn({ event: 'recovered-partial', qid: id, action: 'removed' });
  for (const id of restored) log.warn({ event: 'recovered-complete', qid: id, action: 'kept' });
  for (const id of unreadable) log.error({ event: 'recovery-error', qid: id, action: 'left', reason: 'reserved file could not be read' });
  store.reserved.use();
  // Commit notices go to qmgr (through master) in batches: one message per NOTICE_BATCH_MS, not one per mail.
  let committed: string[] = [];
  const sendCommitted = () => {
    const qids = committed;
    committed = [];
    if (process.connected) process.send!({ type: 'commit', qids });
  };
  const onCommit = (qid: string) => {
    if (committed.push(qid) === 1) setTimeout(sendCommitted, NOTICE_BATCH_MS);
  };
  // Messages recovery made committed: qmgr hears of them like any other (it also finds them when it scans).
  for (const id of restored) onCommit(id);
  const cleanup = createCleanup({ log, store, onCommit }, cfg);
  const path = init.socket!;
  rmSync(path, { force: true });
  await cleanup.listen(path);
  chmodSync(path, 0o660);
  if (init.socketGroup !== undefined && init.socketGroup >= 0) chownSync(path, process.getuid!(), init.socketGroup);
  onMasterMessage((m: { type: string; config?: Config }) => {
    if (m.type === 'stop') void cleanup.close().then(async () => {
      await store.reserved.stop();
      if (committed.length > 0) sendCommitted();
      process.exit(0);
    });
    else if (m.type === 'config') cleanup.reconfigure(m.config!);
  });
  process.send!({ type: 'ready' });
}

async function runSmtpd(init: InitMessage): Promise<void> {
  const cfg = init.config;
  const { createSmtpd, MasterGate } = await import('./smtpd/index.ts');
  const log = createLogger('smtpd', cfg.log.level, { batched: true });
  // The listening handles (by their index in master's list) this worker accepts on now.
  const acceptingOn = new Set<number>();
  const gate = new MasterGate({
    send: (m) => process.send!(m),
    connected: () => process.connected,
    accepting: () => acceptingOn.size > 0,
    perIpLimits: cfg.smtp.max_sessions_per_ip > 0 || cfg.smtp.max_connection_rate_per_ip > 0,
    batchMs: NOTICE_BATCH_MS,
  });
  const smtpd = createSmtpd({ log, gate, cleanupPath: init.cleanupPath! }, cfg);
  // Master tells each worker whether to accept new connections (src/master/acceptors.ts): every worker gets
  // the listening handles at start, those told to accept listen on them, the others close their copy and get
  // the handles again when they are to start accepting. An accepting worker reports how busy its event loop is.
  let stopping = false;
  let elu = performance.eventLoopUtilization();
  setInterval(() => {
    const now = performance.eventLoopUtilization();
    const load = performance.eventLoopUtilization(now, elu).utilization;
    elu = now;
    if (acceptingOn.size > 0 && !stopping && process.connected) process.send!({ type: 'load', load: Math.round(load * 1000) / 1000 });
  }, LOAD_REPORT_MS).unref();
  const accept = (handle: unknown, index: number, display: string, first: boolean) => {
    if (stopping || acceptingOn.has(index)) return closeHandle(handle);
    acceptingOn.add(index);
    const server: Server = createServer({ pauseOnConnect: false, allowHalfOpen: true });
    server.on('error', (e: NodeJS.ErrnoException) => {
      // Not accepting on it after all: once it accepts on nothing, its reports stop and master counts it busy.
      acceptingOn.delete(index);
      process.send!({ type: 'listen-error', display, code: e.code ?? e.message });
    });
    server.listen(handle as object, () => {
      // Told to pause, drain or retire while this listen was under way: not accepting on it after all.
      if (stopping || !acceptingOn.has(index)) server.close();
      else {
        smtpd.attach(server);
        elu = performance.eventLoopUtilization();
        gate.askSlots();
      }
      if (first) process.send!({ type: 'listening', display });
    });
  };
  onMasterMessage((m: GateMessage & { display?: string; index?: number; accept?: boolean; deadlineMs?: number; drainMs?: number }, handle?: unknown) => {
    if (gate.handle(m)) return;
    switch (m.type) {
      case 'listen':
        // At start: the handle, and whether to accept on it now.
        if (m.accept !== false) return accept(handle, m.index ?? 0, m.display!, true);
        closeHandle(handle);
        process.send!({ type: 'listening', display: m.display });
        return;
      case 'accept':
        accept(handle, m.index ?? 0, m.display!, false);
        return;
      case 'pause':
        acceptingOn.clear();
        smtpd.pause();
        return;
      case 'drain':
        stopping = true;
        void smtpd.drain(m.deadlineMs ?? 0).then(() => process.exit(0));
        return;
      case 'retire':
        stopping = true;
        void smtpd.retire(m.deadlineMs ?? 0, m.drainMs ?? 0).then(() => process.exit(0));
        return;
    }
  });
}

// Closes a listening handle master sent that this process will not listen on.
function closeHandle(handle: unknown): void {
  (handle as { close?: () => void } | undefined)?.close?.();
}

async function runQmgr(init: InitMessage): Promise<void> {
  const cfg = init.config;
  const { createQmgr } = await import('./qmgr/index.ts');
  const { QueueStore } = await import('./queue/index.ts');
  const log = createLogger('qmgr', cfg.log.level, { batched: true });
  const store = new QueueStore(cfg.queue.dir);
  const qmgr = createQmgr({ log, store, deliveryPath: init.deliveryPath!, cleanupPath: init.cleanupPath!, busy: init.busy ?? [] }, cfg);
  onMasterMessage((m: { type: string; qids?: string[]; qid?: string; id?: number; cmd?: QmgrCommand; deadlineMs?: number }) => {
    if (m.type === 'commit') for (const qid of m.qids ?? []) qmgr.notify(qid);
    else if (m.type === 'released') qmgr.release(m.qid!);
    else if (m.type === 'control') {
      void qmgr.control(m.cmd!).then(
        (answer) => process.connected && process.send!({ type: 'control-answer', id: m.id, answer }),
        (e: Error) => process.connected && process.send!({ type: 'control-answer', id: m.id, answer: { ok: false, error: e.message } }),
      );
    } else if (m.type === 'stop') void qmgr.stop(m.deadlineMs ?? 0).then(() => process.exit(0));
  });
  await qmgr.start();
  process.send!({ type: 'ready' });
}

async function runDelivery(init: InitMessage): Promise<void> {
  const cfg = init.config;
  const { createDelivery } = await import('./delivery/index.ts');
  const { createResolver, parseServer, systemServers } = await import('./dns/index.ts');
  const { parseDuration } = await import('./core/duration.ts');
  const log = createLogger('delivery', cfg.log.level, { batched: true });
  const servers = cfg.dns.servers.length > 0 ? cfg.dns.servers.map((s) => parseServer(s)!).filter(Boolean) : systemServers();
  const resolver = createResolver(servers, parseDuration(cfg.dns.timeout)!, cfg.dns.dnssec);
  const tell = (m: object) => {
    if (process.connected) process.send!(m);
  };
  const worker = createDelivery({
    log, resolver, cleanupPath: init.cleanupPath!, ...(init.commandPath ? { commandPath: init.commandPath } : {}),
    orphanDone: (qid) => tell({ type: 'orphan-done', qid }),
  }, cfg);
  onMasterMessage((m: { type: string; display?: string }, handle?: unknown) => {
    if (m.type === 'listen') listenOnHandle(handle, (server) => worker.attach(server), m.display);
    else if (m.type === 'drain') void worker.drain().then(() => process.exit(0));
    else if (m.type === 'orphans?') tell({ type: 'orphans', qids: worker.orphanJobs() });
  });
}

// An agent listens on the Unix socket master bound and shares among its kind, then tells master it is ready.
function listenOnHandle(handle: unknown, attach: (server: Server) => void, display?: string): void {
  const server = createServer();
  server.listen(handle as object, () => {
    attach(server);
    process.send!({ type: 'listening', ...(display !== undefined ? { display } : {}) });
  });
}

async function runCommandAgent(init: InitMessage): Promise<void> {
  const cfg = init.config;
  const { createCommandAgent } = await import('./delivery/index.ts');
  const { parseDuration } = await import('./core/duration.ts');
  const log = createLogger('command', cfg.log.level, { batched: true });
  // Master passes the user commands run as; without one the agent refuses to start (never runs them as root).
  if (init.commandUser === undefined || init.commandUser.uid === 0) throw new Error('command agent: no command user');
  const agent = createCommandAgent(log, parseDuration(cfg.local.command_timeout)!, init.commandUser);
  // Commands run in their own process groups: they must not outlive the agent (master gone, a crash).
  process.on('exit', () => agent.killAll());
  onMasterMessage((m: { type: string }, handle?: unknown) => {
    if (m.type === 'listen') listenOnHandle(handle, (server) => agent.attach(server));
    else if (m.type === 'drain') void agent.drain().then(() => process.exit(0));
    else if (m.type === 'retire') void agent.retire().then(() => process.exit(0));
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (e: Error) => {
    process.stderr.write(`palisade: ${e.message}\n`);
    process.exitCode = (e as { exitCode?: number }).exitCode ?? 70;
  },
);
