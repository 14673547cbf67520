// SPDX-License-Identifier: MIT
// delivery: the delivery agents (SMTP, LMTP, local Maildir) in one worker process type. Each connection on
// the shared private/delivery socket carries one job from qmgr and gets one JobResult back.
// Must not: move or rewrite queue files (qmgr owns state), write to queue/incoming except through cleanup.

import type { Server, Socket } from 'node:net';
import type { Config } from '../config/index.ts';
import type { Logger } from '../log/index.ts';
import type { DeliveryJob, JobResult, RecipientResult } from '../core/delivery.ts';
import { classify, compileOverrides } from '../core/classify.ts';
import { parseDuration } from '../core/duration.ts';
import { encodeJson, exchange, FrameDecoder, framesOrDrop, submit } from '../ipc/index.ts';
import { appendRecordsSync, readQueueFile, type StateRecord } from '../queue/index.ts';
import { createTable, readAliases, type AliasEntry } from '../lookup/index.ts';
import type { Resolver } from '../dns/index.ts';
import { ConnectionCache, deliverSmtp } from './smtp.ts';
import { deliverLocal, type LocalDeps } from './local.ts';
import type { CommandOutcome } from './command.ts';
import { stageTimeouts, type OutboundMessage } from './session.ts';
import { messageChunks } from './message.ts';

export { dotStuff } from './message.ts';
export { createCommandAgent } from './command.ts';

/** What the delivery worker needs. */
export interface DeliveryDeps {
  readonly log: Logger;
  readonly resolver: Resolver;
  /** cleanup's socket, for alias forwarding. */
  readonly cleanupPath: string;
  /** The command agent's socket; set only when [local] allow_commands is on. */
  readonly commandPath?: string;
  /** A job orphanJobs() returned has ended (its recipients delivered are marked in the queue file). */
  readonly orphanDone?: (qid: string) => void;
}

/** A running delivery worker. */
export interface DeliveryWorker {
  /** Serves jobs arriving on `server` (a listening handle shared by all workers). */
  attach(server: Server): void;
  /** Finishes running jobs, then resolves. */
  drain(): Promise<void>;
  /**
   * The qmgr that sent the running jobs is gone (master asks before it starts the next one): returns their
   * messages, one entry per job not returned before, and reports each through `orphanDone` as it ends.
   */
  orphanJobs(): string[];
}

/** Creates a delivery worker. */
export function createDelivery(deps: DeliveryDeps, cfg: Config): DeliveryWorker {
  const single = cfg.delivery.timeout === '' ? null : parseDuration(cfg.delivery.timeout)!;
  const cache = new ConnectionCache({ idleMs: parseDuration(cfg.delivery.connection_cache_time)!, maxUses: cfg.delivery.connection_reuse_limit, perDestination: cfg.delivery.concurrency });
  const smtpDeps = {
    resolver: deps.resolver,
    cache,
    hostname: cfg.server.hostname,
    session: { helo: cfg.server.hostname, connectTimeoutMs: parseDuration(cfg.delivery.connect_timeout)!, timeouts: stageTimeouts(single) },
  };
  const overrides = compileOverrides(cfg.delivery.reply_overrides);
  let aliases = new Map<string, AliasEntry>();
  if (cfg.local.aliases !== '') {
    try {
      aliases = new Map(readAliases(cfg.local.aliases).entries.map((e) => [e.name, e]));
    } catch (e) {
      deps.log.error({ event: 'aliases-unreadable', err: (e as Error).message });
    }
  }
  const localDeps: LocalDeps = {
    mailboxDir: cfg.local.mailbox_dir,
    localDomains: new Set(cfg.local.domains),
    aliases,
    recipients: createTable(cfg.local.recipients),
    hostname: cfg.server.hostname,
    reinject: async (sender, recipients, msg, prefix) => {
      const res = await submit(deps.cleanupPath, {
        sender,
        recipients: recipients.map((address) => ({ address })),
        smtputf8: recipients.some((r) => /[^\x00-\x7f]/.test(r)),
        client: { ip: '127.0.0.1', port: 0, helo: 'localhost', protocol: 'local' },
      }, (async function* () {
        yield Buffer.from(prefix);
        for await (const c of messageChunks(msg.file, msg.offset, msg.length)) yield c as Buffer;
      })());
      if (!res.ok) throw Object.assign(new Error(`forwarding refused: ${res.code} ${res.text}`), { code: 'EREINJECT' });
      return res.qid;
    },
    ...(deps.commandPath !== undefined ? { runCommand: commandClient(deps.commandPath, parseDuration(cfg.local.command_timeout)!) } : {}),
  };
  let running = 0;
  let idle: (() => void) | null = null;

  async function run(job: DeliveryJob): Promise<JobResult> {
    let msg: OutboundMessage;
    if (job.message !== undefined) {
      msg = { file: job.file, offset: job.message.offset, length: job.message.length, eightBit: job.eightBit };
    } else {
      try {
        const q = await readQueueFile(job.file);
        msg = { file: job.file, offset: q.messageOffset, length: q.messageLength, eightBit: q.eightBit };
      } catch (e) {
        const reason = `cannot read queue file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
        return { results: job.recipients.map((r) => ({ index: r.index, status: 'deferred', dsn: '4.3.0', reply: reason, relay: '' })), destinationFailed: false };
      }
    }
    if (job.route.kind === 'local') return deliverLocal(job, msg, localDeps);
    return deliverSmtp(job, msg, smtpDeps);
  }

  // Before answering qmgr, the recipients delivered are marked in the queue file itself (as Postfix's delivery
  // agents do): a qmgr that dies before it has the answer is followed by one that finds them done, not by a
  // second delivery. A recipient that asked for a success DSN is marked as owing it, so the next qmgr sends it.
  // Failures are left to qmgr (its classification and DSN), unless the job is an `orphan`: its qmgr is gone
  // and will never have the answer, so failures for good are marked too (classified by the reply overrides,
  // as qmgr would), owing their failure DSN: a command that failed is not run again. A temporary failure is
  // left for the next qmgr to try again. Best effort: qmgr records the same. Returns the results as marked.
  function markFinal(job: DeliveryJob, res: JobResult, orphan: boolean): readonly RecipientResult[] {
    const at = new Date().toISOString();
    const results = orphan ? res.results.map((r) => classify(r, overrides)) : res.results;
    const recs = results.flatMap((r): StateRecord[] => {
      const want = job.recipients.find((x) => x.index === r.index);
      if (want === undefined) return [];
      if (r.status === 'sent') {
        const owed = (want.notify ?? []).includes('SUCCESS') ? { success_owed: true, ...(r.relayed ? { relayed: r.relayed } : {}) } : {};
        return [{ rcpt: r.index, state: 'sent' as const, dsn: r.dsn, reply: r.reply, at, ...owed }];
      }
      if (!orphan || r.status !== 'bounced') return [];
      return [{ rcpt: r.index, state: 'bounced' as const, dsn: r.dsn, reply: r.reply, at, failure_owed: true, ...(r.targets ? { targets: r.targets } : {}) }];
    });
    try {
      appendRecordsSync(job.file, recs);
    } catch (e) {
      deps.log.warn({ event: 'mark-failed', qid: job.qid, err: (e as NodeJS.ErrnoException).code ?? (e as Error).message });
    }
    return results;
  }

  // The queue manager this job came from is gone, so nobody else logs its outcome: delivered and bounced
  // recipients are final (marked above); the others are tried again by the next queue manager.
  function logOrphanOutcome(job: DeliveryJob, results: readonly RecipientResult[]): void {
    for (const r of results) {
      const to = job.recipients.find((x) => x.index === r.index)?.address ?? '';
      deps.log.info({ event: 'delivery', qid: job.qid, to, relay: r.relay || job.nexthop, dsn: r.dsn, status: r.status, reply: r.reply, note: 'finished after its queue manager was replaced' });
    }
  }

  // Connections from qmgr stay open between jobs; `busy` = jobs running on one.
  const conns = new Map<Socket, { busy: number }>();
  // Every job running, and whether master was told it outlives its qmgr.
  const jobs = new Set<{ qid: string; orphan: boolean }>();
  let draining = false;

  function handle(sock: Socket): void {
    const dec = new FrameDecoder();
    const st = { busy: 0 };
    conns.set(sock, st);
    sock.on('close', () => conns.delete(sock));
    sock.on('error', () => {});
    sock.on('data', (c: Buffer) => {
      const frames = framesOrDrop(dec, c, sock);
      if (frames === null) return;
      for (const f of frames) {
        if (f.kind !== 'json') continue;
        const job = JSON.parse(f.payload.toString('utf8')) as DeliveryJob;
        running++;
        st.busy++;
        const entry = { qid: job.qid, orphan: false };
        jobs.add(entry);
        void run(job)
          .catch((e: Error): JobResult => ({
            results: job.recipients.map((r) => ({ index: r.index, status: 'deferred', dsn: '4.3.0', reply: `internal error: ${e.message}`, relay: '' })),
            destinationFailed: false,
          }))
          .then((res) => {
            st.busy--;
            const results = markFinal(job, res, entry.orphan);
            jobs.delete(entry);
            if (entry.orphan) {
              logOrphanOutcome(job, results);
              deps.orphanDone?.(job.qid);
            }
            // qmgr keeps the connection for its next job, unless this agent is stopping.
            if (!sock.destroyed) {
              if (draining && st.busy === 0) sock.end(encodeJson(res));
              else sock.write(encodeJson(res));
            }
          })
          .finally(() => {
            running--;
            if (running === 0) idle?.();
          });
      }
    });
  }

  const servers: Server[] = [];
  return {
    attach(server: Server): void {
      servers.push(server);
      server.on('connection', handle);
    },
    drain(): Promise<void> {
      draining = true;
      for (const s of servers) s.close();
      // Idle connections end now: qmgr sends its next jobs to the other agents (or a new one).
      for (const [sock, st] of conns) if (st.busy === 0) sock.end();
      cache.closeAll();
      if (running === 0) return Promise.resolve();
      return new Promise((r) => (idle = r));
    },
    orphanJobs(): string[] {
      const out: string[] = [];
      for (const j of jobs) {
        if (j.orphan) continue;
        j.orphan = true;
        out.push(j.qid);
      }
      return out;
    },
  };
}

// Asks the command agent to run one command; no answer (agent restarting, gone) = try again later.
function commandClient(path: string, timeoutMs: number): NonNullable<LocalDeps['runCommand']> {
  return async (command, env, message) => {
    // The agent enforces the time limit; this one only covers an agent that never answers.
    const r = await exchange(path, { type: 'command', command, env }, message, timeoutMs + 30_000, 'command agent');
    if (!r.ok) return { status: 'deferred', dsn: '4.3.0', reply: r.error };
    const a = r.answer as Partial<CommandOutcome>;
    if ((a.status === 'sent' || a.status === 'deferred' || a.status === 'bounced') && typeof a.dsn === 'string' && typeof a.reply === 'string') return { status: a.status, dsn: a.dsn, reply: a.reply };
    return { status: 'deferred', dsn: '4.3.0', reply: 'bad answer from the command agent' };
  };
}
