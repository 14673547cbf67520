// SPDX-License-Identifier: MIT
// smtpd: the SMTP server. Accepts connections on listening handles that master passes in, asks the anvil
// (in master) before greeting, runs one Connection per client, streams messages to cleanup.
// Must not: open queue files, hold keys, or trust anything the client says beyond its bounds.

import type { Server, Socket } from 'node:net';
import type { Config } from '../config/index.ts';
import type { Logger } from '../log/index.ts';
import { networkList } from '../core/cidr.ts';
import { R } from '../core/reply.ts';
import { parseDuration } from '../core/duration.ts';
import { createTable } from '../lookup/index.ts';
import { readAliases } from '../lookup/index.ts';
import type { Admission } from '../policy/index.ts';
import { Connection, normalizeIp, type ConnectionDeps } from './connection.ts';
import { CleanupPool } from './cleanup-client.ts';
import type { RecipientPolicy } from './relay.ts';

export { MasterGate, type GateMessage, type GateNotice, type MasterGateOptions } from './gate.ts';

/** Asks the shared session counter; implemented over the master channel in production. */
export interface SessionGate {
  /** A verdict at once when the worker can decide alone (a leased slot), else master's. */
  admit(ip: string, exempt: boolean): Admission | Promise<Admission>;
  /** `leased`: the session was admitted at once, on a leased slot (admit answered synchronously). */
  release(ip: string, leased: boolean): void;
  /** Counts one message (or one recipient) against the per-IP rate; false = over the limit. */
  message(ip: string, exempt: boolean, kind?: 'message' | 'recipient'): Promise<boolean>;
  /** Shared state from master: stress mode, spool short of space. */
  readonly flags: { readonly stress: boolean; readonly diskLow: boolean };
}

/** What smtpd needs from outside. */
export interface SmtpdDeps {
  readonly log: Logger;
  readonly gate: SessionGate;
  /** Path of cleanup's socket (queue.dir/private/cleanup). */
  readonly cleanupPath: string;
}

/** A running smtpd: attach listening servers, drain on shutdown. */
export interface Smtpd {
  attach(server: Server): void;
  /** Stops taking new connections (closes the listening servers) until attach() again; sessions go on. */
  pause(): void;
  /** Stops taking connections; ends idle sessions now and the rest by `deadlineMs`. Resolves when all are gone. */
  drain(deadlineMs: number): Promise<void>;
  /**
   * Reload: stops taking connections and resolves once every session has ended on its own (nobody is told to
   * go); a session still open after `deadlineMs` is drained like drain(drainMs).
   */
  retire(deadlineMs: number, drainMs: number): Promise<void>;
  readonly sessions: number;
}

/** Builds the recipient policy from config (reads recipient and alias files once). */
export function createRecipientPolicy(cfg: Config): RecipientPolicy {
  const aliasNames = cfg.local.aliases === '' ? [] : readAliases(cfg.local.aliases).entries.map((e) => e.name);
  return {
    localDomains: new Set(cfg.local.domains),
    relayDomains: new Set(cfg.relay.domains),
    trusted: networkList(cfg.relay.trusted_networks),
    recipients: createTable(cfg.local.recipients),
    aliases: createTable(aliasNames),
  };
}

/** Creates the smtpd for one worker process. */
export function createSmtpd(deps: SmtpdDeps, cfg: Config): Smtpd {
  const trusted = networkList(cfg.relay.trusted_networks);
  const connDeps: ConnectionDeps = {
    limits: {
      hostname: cfg.server.hostname,
      maxMessageSize: cfg.smtp.max_message_size,
      maxRecipients: cfg.smtp.max_recipients,
      requireHelo: cfg.smtp.require_helo,
    },
    policy: createRecipientPolicy(cfg),
    cleanup: new CleanupPool(deps.cleanupPath),
    log: deps.log,
    maxErrors: cfg.smtp.max_errors,
    timeoutMs: parseDuration(cfg.smtp.timeout)!,
    stressMaxErrors: cfg.smtp.stress_max_errors,
    stressTimeoutMs: parseDuration(cfg.smtp.stress_timeout)!,
    flags: deps.gate.flags,
    // Trusted networks are exempt from the rates: no question to master for them.
    messageRate: cfg.smtp.max_message_rate_per_ip > 0 ? (ip: string) => trusted.has(ip) || deps.gate.message(ip, false) : null,
    recipientRate: cfg.smtp.max_recipient_rate_per_ip > 0 ? (ip: string) => trusted.has(ip) || deps.gate.message(ip, false, 'recipient') : null,
  };
  const conns = new Set<Connection>();
  const servers: Server[] = [];
  let draining = false;
  let drained: (() => void) | null = null;
  let idle: (() => void) | null = null;

  function onConnection(sock: Socket): void {
    if (draining) {
      sock.end(`421 4.3.2 ${cfg.server.hostname} Service shutting down\r\n`);
      return;
    }
    const conn = new Connection(sock, connDeps);
    const ip = normalizeIp(sock.remoteAddress ?? '');
    conns.add(conn);
    let admitted = false;
    let leased = false;
    conn.onClose = () => {
      conns.delete(conn);
      if (admitted) deps.gate.release(ip, leased);
      if (conns.size === 0) idle?.();
      if (draining && conns.size === 0) drained?.();
    };
    const decide = (verdict: Admission): void => {
      if (sock.destroyed) {
        if (verdict === 'ok') deps.gate.release(ip, leased);
        return;
      }
      if (verdict === 'ok') {
        admitted = true;
        conn.start();
      } else {
        const reason = verdict === 'global' ? 'max_sessions' : verdict === 'ip' ? 'max_sessions_per_ip' : 'max_connection_rate_per_ip';
        deps.log.info({ event: 'reject', client: ip, reason });
        conn.refuse(verdict === 'global' ? R.tooManySessions : verdict === 'ip' ? R.tooManySessionsIp : R.connectionRate);
      }
    };
    const verdict = deps.gate.admit(ip, trusted.has(ip));
    leased = verdict === 'ok';
    if (typeof verdict === 'string') decide(verdict);
    else verdict.then(decide, () => conn.refuse(R.localError));
  }

  function drain(deadlineMs: number): Promise<void> {
    draining = true;
    for (const s of servers) s.close();
    if (conns.size === 0) return Promise.resolve();
    for (const c of conns) c.shutdown(false);
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        for (const c of conns) c.shutdown(true);
        setTimeout(resolve, 200);
      }, deadlineMs);
      drained = () => {
        clearTimeout(timer);
        resolve();
      };
      if (conns.size === 0) drained();
    });
  }

  return {
    attach(server: Server): void {
      servers.push(server);
      server.on('connection', onConnection);
    },
    pause(): void {
      for (const s of servers.splice(0)) s.close();
    },
    drain,
    retire(deadlineMs: number, drainMs: number): Promise<void> {
      for (const s of servers) s.close();
      if (conns.size === 0) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const timer = setTimeout(() => void drain(drainMs).then(resolve), deadlineMs);
        idle = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    },
    get sessions() {
      return conns.size;
    },
  };
}
