// SPDX-License-Identifier: MIT
// The command agent: runs the `|command` targets of the aliases file, only when [local] allow_commands is on.
// It is its own process, the only child allowed to start processes. Like Postfix's local(8) it runs as root,
// so that commands can run as another user than itself ([local] command_user: a command must not be able to
// trace or signal the process that runs the other aliases' commands); the permission model lets it read its
// code and nothing else. A local delivery agent sends it one request per command on private/command (the
// header, then the message as data frames, then end) and gets one outcome back. The agent runs
// `/bin/sh -c command` as command_user in its own process group with the message on stdin and a small,
// sanitised environment, reads its output (a status line at its start is used), kills the group at [local]
// command_timeout, and maps the exit status the sysexits(3) way (as local(8) does).
// Must not: read the queue or the mailboxes (it gets the message bytes from the delivery agent); run
// anything as root.

import { spawn } from 'node:child_process';
import type { Server, Socket } from 'node:net';
import type { Logger } from '../log/index.ts';
import { FrameDecoder, encodeJson, framesOrDrop } from '../ipc/index.ts';

/** What the delivery agent asks for: the command and the variables of its environment. */
export interface CommandRequest {
  readonly type: 'command';
  readonly command: string;
  readonly env: Readonly<Record<string, string>>;
}

/** A command's outcome for the recipient it was delivered for. */
export interface CommandOutcome {
  readonly status: 'sent' | 'deferred' | 'bounced';
  readonly dsn: string;
  readonly reply: string;
}

// Output kept for the DSN and the log (the rest is read and dropped, so the command never blocks on it).
const MAX_OUTPUT = 1024;

// sysexits(3) → enhanced status and meaning; the class (4 or 5) says whether to try again.
const SYSEXITS: Record<number, [string, string]> = {
  64: ['5.3.0', 'command line usage error'],
  65: ['5.6.0', 'data format error'],
  66: ['5.3.0', 'cannot open input'],
  67: ['5.1.1', 'user unknown'],
  68: ['5.1.2', 'host name unknown'],
  69: ['5.3.0', 'service unavailable'],
  70: ['5.3.0', 'internal software error'],
  71: ['4.3.0', 'system resource problem'],
  72: ['5.3.0', 'critical OS file missing'],
  73: ['5.2.0', 'cannot create output file'],
  74: ['5.3.0', 'input/output error'],
  75: ['4.3.0', 'temporary failure'],
  76: ['5.5.0', 'remote protocol error'],
  77: ['5.7.0', 'permission denied'],
  78: ['5.3.5', 'local configuration error'],
};

/** A command's status line as reply text: printable ASCII only, bounded. */
export function outputText(out: Buffer): string {
  return out.toString('utf8').replace(/[^\x20-\x7e]+/g, ' ').trim().slice(0, 200);
}

/**
 * Maps how a command ended to a recipient outcome: exit 0 = delivered; a sysexits code by its table (75 =
 * try again); other codes bounce; a signal = try again; the time limit bounces (5.3.0). Output that starts with an enhanced
 * status code ("4.2.2 mailbox full") takes precedence over a non-zero exit status, as with Postfix, and its
 * first line becomes the reply text. Other output is not repeated anywhere: a command may well echo the
 * message, and replies reach the log.
 */
export function commandOutcome(exit: { code: number | null; signal: string | null; timedOut: boolean; error?: string }, output: Buffer): CommandOutcome {
  if (exit.error !== undefined) return { status: 'deferred', dsn: '4.3.0', reply: `command could not be started: ${exit.error}` };
  // As Postfix: a command that hangs would hang again on every retry.
  if (exit.timedOut) return { status: 'bounced', dsn: '5.3.0', reply: 'command time limit exceeded' };
  if (exit.code === 0) return { status: 'sent', dsn: '2.0.0', reply: 'delivered to command' };
  if (exit.code === null) return { status: 'deferred', dsn: '4.3.0', reply: `command died with signal ${exit.signal ?? '?'}` };
  const line = outputText(output.subarray(0, Math.max(0, output.indexOf(10) === -1 ? output.length : output.indexOf(10))));
  const own = /^([45])\.(\d{1,3})\.(\d{1,3})\b/.exec(line);
  if (own !== null) return { status: own[1] === '4' ? 'deferred' : 'bounced', dsn: own[0], reply: `command exited with status ${exit.code}: ${line}` };
  const [dsn, meaning] = SYSEXITS[exit.code] ?? ['5.3.0', 'unknown error'];
  return { status: dsn.startsWith('4') ? 'deferred' : 'bounced', dsn, reply: `command exited with status ${exit.code} (${meaning})` };
}

// Characters an environment value keeps; the others become "_" (values come from addresses a sender chose).
const ENV_SAFE = /[^A-Za-z0-9!@%\-_=+:,./]/g;
const ENV_NAMES = new Set(['SENDER', 'RECIPIENT', 'ORIGINAL_RECIPIENT', 'LOCAL', 'DOMAIN', 'USER', 'LOGNAME', 'CLIENT_ADDRESS', 'CLIENT_HELO', 'CLIENT_PROTOCOL', 'QUEUE_ID']);

/** The command's environment: a fixed PATH and shell, and the request's variables (known names only, sanitised). */
export function commandEnv(vars: Readonly<Record<string, string>>): Record<string, string> {
  const env: Record<string, string> = { PATH: '/usr/local/bin:/usr/bin:/bin', SHELL: '/bin/sh', HOME: '/', LANG: 'C.UTF-8' };
  for (const [k, v] of Object.entries(vars)) if (ENV_NAMES.has(k) && typeof v === 'string') env[k] = v.slice(0, 1000).replace(ENV_SAFE, '_');
  return env;
}

/** A command being run: feed it the message, then `finish()` for the outcome. */
export interface RunningCommand {
  /** Writes message bytes to the command's stdin (resolves when taken; a command that stopped reading is fine). */
  write(chunk: Buffer): Promise<void>;
  /** Ends stdin and resolves when the command has ended (or was killed). */
  finish(): Promise<CommandOutcome>;
  /** Resolves when the command has ended, however it ends. */
  readonly ended: Promise<CommandOutcome>;
  /** Kills the command's process group (the delivery agent went away). */
  kill(): void;
}

/** Who a command runs as (the agent runs as root to switch to it); absent only in unit tests. */
export interface CommandUser {
  readonly uid: number;
  readonly gid: number;
}

// Node adds its own NODE_OPTIONS (the agent's permission flags) to a child's environment whatever `env` says:
// a first shell drops it, then runs the command with the environment we chose.
const SHELL_ARGS = ['-c', 'unset NODE_OPTIONS; exec /bin/sh -c "$1"', 'sh'];

/** Starts `/bin/sh -c command` as `user` in its own process group; the time limit runs from the start. */
export function startCommand(command: string, vars: Readonly<Record<string, string>>, timeoutMs: number, user?: CommandUser): RunningCommand {
  const output: Buffer[] = [];
  let kept = 0;
  let timedOut = false;
  let stdinClosed = false;
  let exited = false;
  // Supplementary groups are cleared when uid/gid are set (libuv), so only the user's own group applies.
  const child = spawn('/bin/sh', [...SHELL_ARGS, command], {
    cwd: '/', env: commandEnv(vars), stdio: ['pipe', 'pipe', 'pipe'], detached: true, ...(user ? { uid: user.uid, gid: user.gid } : {}),
  });
  // Only while the shell runs: after its exit the group id may pass to other processes of the same user, and
  // what the command left in the background is its own business.
  const killGroup = () => {
    if (exited || child.pid === undefined) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  const collect = (c: Buffer) => {
    if (kept >= MAX_OUTPUT) return;
    output.push(c.subarray(0, MAX_OUTPUT - kept));
    kept += Math.min(c.length, MAX_OUTPUT - kept);
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  // A command that exits without reading all of its input closes the pipe: EPIPE is not a failure.
  child.stdin.on('error', () => {
    stdinClosed = true;
  });
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup();
  }, timeoutMs);
  const ended = new Promise<CommandOutcome>((resolve) => {
    let spawnError: string | undefined;
    let settled = false;
    const settle = (code: number | null, signal: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(commandOutcome({ code, signal, timedOut, ...(spawnError !== undefined ? { error: spawnError } : {}) }, Buffer.concat(output)));
    };
    child.on('error', (e: NodeJS.ErrnoException) => {
      spawnError = e.code ?? e.message;
      // Not started at all: there will be no exit to wait for.
      if (child.pid === undefined) settle(null, null);
    });
    // Its output is read to the end ('close'); a process it left in the background may hold the pipes open,
    // so the outcome comes at most a moment after the shell's exit. What it started is left alone (a
    // mailing list manager may hand its work to a background process); only the time limit kills the group.
    child.on('close', (code, signal) => settle(code, signal));
    child.on('exit', (code, signal) => {
      exited = true;
      setTimeout(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        settle(code, signal);
      }, 200).unref();
    });
  });
  return {
    write(chunk: Buffer): Promise<void> {
      if (stdinClosed || child.stdin.destroyed) return Promise.resolve();
      return new Promise((resolve) => {
        if (child.stdin.write(chunk)) return resolve();
        const go = () => {
          child.stdin.off('drain', go);
          child.stdin.off('close', go);
          resolve();
        };
        child.stdin.on('drain', go);
        child.stdin.on('close', go);
      });
    },
    finish(): Promise<CommandOutcome> {
      if (!child.stdin.destroyed) child.stdin.end();
      return ended;
    },
    kill: killGroup,
    ended,
  };
}

/** The running command agent. */
export interface CommandAgent {
  /** Serves requests arriving on `server` (the listening private/command handle from master). */
  attach(server: Server): void;
  /**
   * Stops taking requests and kills the commands still running (their recipients get no answer and are tried
   * again); resolves when they have ended. Master stops the delivery agents first, so normally none is left.
   */
  drain(): Promise<void>;
  /**
   * Reload: stops taking requests; resolves once every request taken has been answered and its connection
   * closed (each command ends by command_timeout at most).
   */
  retire(): Promise<void>;
  /** Kills every running command's process group at once (the process is exiting). */
  killAll(): void;
}

/** Creates the command agent; every command runs as `user`. */
export function createCommandAgent(log: Logger, timeoutMs: number, user: CommandUser): CommandAgent {
  let running = 0;
  // Requests whose connection is still open: a command's process can end before its answer has gone out.
  let open = 0;
  let idle: (() => void) | null = null;
  let retired: (() => void) | null = null;
  const servers: Server[] = [];
  const live = new Set<RunningCommand>();

  // Wakes drain() once no command runs, retire() once every request has also been answered.
  function settled(): void {
    if (running > 0) return;
    idle?.();
    if (open === 0) retired?.();
  }

  function handle(sock: Socket): void {
    open++;
    const dec = new FrameDecoder({ streamData: true });
    let cmd: RunningCommand | null = null;
    let req: CommandRequest | null = null;
    let chain: Promise<void> = Promise.resolve();
    let answered = false;
    let pending = 0;
    sock.on('error', () => {});
    sock.on('close', () => {
      // The delivery agent went away before the end: its recipient is not answered, so nothing is lost by
      // stopping the command (it is run again on the next attempt).
      if (!answered) cmd?.kill();
      open--;
      settled();
    });
    const answer = (o: CommandOutcome) => {
      answered = true;
      if (!sock.destroyed) sock.end(encodeJson(o));
    };
    const frame = async (kind: string, payload: Buffer): Promise<void> => {
      if (answered) return;
      if (req === null) {
        const r = kind === 'json' ? (JSON.parse(payload.toString('utf8')) as CommandRequest) : null;
        if (r === null || r.type !== 'command' || typeof r.command !== 'string' || r.command === '') return answer({ status: 'deferred', dsn: '4.3.0', reply: 'command agent: bad request' });
        req = r;
        running++;
        const c = startCommand(r.command, r.env ?? {}, timeoutMs, user);
        cmd = c;
        live.add(c);
        void c.ended.then(() => {
          live.delete(c);
          running--;
          settled();
        });
        return;
      }
      if (kind === 'data') return cmd!.write(payload);
      if (kind === 'end') {
        const outcome = await cmd!.finish();
        log.info({ event: 'command', qid: req.env.QUEUE_ID, recipient: req.env.RECIPIENT, status: outcome.status, dsn: outcome.dsn, reply: outcome.reply });
        answer(outcome);
      }
    };
    sock.on('data', (c: Buffer) => {
      const frames = framesOrDrop(dec, c, sock);
      if (frames === null) return;
      for (const f of frames) {
        pending++;
        chain = chain.then(() => frame(f.kind, f.payload)).catch(() => void sock.destroy()).finally(() => {
          pending--;
          if (pending < 4 && sock.isPaused()) sock.resume();
        });
      }
      // A command that reads slowly holds the message back in the delivery agent, not in this process.
      if (pending >= 16) sock.pause();
    });
  }

  return {
    attach(server: Server): void {
      servers.push(server);
      server.on('connection', handle);
    },
    drain(): Promise<void> {
      for (const s of servers) s.close();
      if (running === 0) return Promise.resolve();
      const p = new Promise<void>((r) => (idle = r));
      for (const c of live) c.kill();
      return p;
    },
    retire(): Promise<void> {
      for (const s of servers) s.close();
      return new Promise<void>((r) => {
        retired = r;
        settled();
      });
    },
    killAll(): void {
      for (const c of live) c.kill();
    },
  };
}
