// SPDX-License-Identifier: MIT
// cli: the `palisade` command and the sendmail/mailq/newaliases entry points. Parses arguments with
// node:util parseArgs, talks to master's control socket, reads the queue as the administrator.

import { parseArgs } from 'node:util';
import { stringify } from 'smol-toml';
import { configPath, loadConfig, ConfigError, type Config } from '../config/index.ts';
import { request } from '../ipc/index.ts';
import { QueueStore, QUEUE_ID, type QueueEntry } from '../queue/index.ts';
import { readAliases } from '../lookup/index.ts';
import { EXIT } from '../core/exit.ts';
import { runSendmail } from './sendmail.ts';

/** Where the CLI runs from. */
export interface CliEnv {
  /** Runs Palisade in the foreground (wired in main.ts); resolves with the exit code. */
  readonly start: (cfg: Config, configFile: string | null) => Promise<number>;
  /** sendmail -bs: one SMTP session on stdin/stdout through smtpd's state machine (wired in main.ts). */
  readonly smtpOnStdio: (cfg: Config) => Promise<number>;
}

const HELP: Record<string, string> = {
  '': `usage: palisade <command> [options]

commands:
  start          run Palisade in the foreground (SIGTERM drains, SIGHUP reloads)
  stop           ask the running Palisade to drain and stop
  reload         re-read the config and certificates without dropping sessions
  check-config   validate the config and print the effective configuration
  queue          list | show ID  (see palisade queue --help)
  newaliases     validate the alias file and put it in use

options:
  --config FILE  config file (else $PALISADE_CONFIG, else ./palisade.toml, else built-in defaults)
  -h, --help     this help`,
  start: 'usage: palisade start [--config FILE]\n\nRuns Palisade in the foreground; prints {"event":"ready"} when every listener is bound.',
  stop: 'usage: palisade stop [--config FILE]\n\nDrains sessions (up to server.drain_timeout) and stops. Exit 75 when Palisade is not running.',
  reload: 'usage: palisade reload [--config FILE]\n\nRe-reads the config; a bad config is refused and the running one stays.',
  'check-config': 'usage: palisade check-config [--config FILE]\n\nValidates the config; prints the effective config as TOML. Exit 78 on errors.',
  queue: `usage: palisade queue <command> [--config FILE]

  list [--json]   every queued message with its recipients and their state
  show ID [--json] one message: envelope, recipients, last reply and next retry
  hold ID         keep a message from delivery until released
  release ID      deliver a held message again
  delete ID       remove a message (no DSN)
  requeue ID      retry a deferred message now
  flush           retry every deferred message now
Exit 1 when the queue ID is unknown, 75 when Palisade is not running (all but list/show).`,
  newaliases: 'usage: newaliases [--config FILE]\n\nValidates the alias file named by local.aliases (exit 65 with the line of each problem), then has a running\nPalisade reload so that the new aliases are used.',
};

/** Runs a CLI command; resolves with the exit code. */
export async function runCli(argv: string[], env: CliEnv): Promise<number> {
  const cmd = argv[0] ?? '';
  if (cmd === 'sendmail') {
    return runSendmail(argv.slice(1), {
      listQueue: (config) => runCli(['queue', 'list', ...(config !== undefined ? ['--config', config] : [])], env),
      smtpOnStdio: env.smtpOnStdio,
    });
  }
  if (cmd === 'mailq') return runCli(['queue', 'list', ...argv.slice(1)], env);
  let parsed;
  try {
    parsed = parseArgs({
      args: argv.slice(1),
      allowPositionals: true,
      options: { config: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (e) {
    return usage(cmd, (e as Error).message);
  }
  const { values, positionals } = parsed;
  if (cmd === '' || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(HELP['']! + '\n');
    return cmd === '' ? EXIT.usage : EXIT.ok;
  }
  if (values.help) {
    if (HELP[cmd] === undefined) return usage('', `unknown command "${cmd}"`);
    process.stdout.write(HELP[cmd] + '\n');
    return EXIT.ok;
  }
  let cfg: Config;
  try {
    cfg = loadConfig(configPath(values.config, process.env, process.cwd()));
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`palisade: config error:\n${e.message}\n`);
      return EXIT.config;
    }
    throw e;
  }
  switch (cmd) {
    case 'start':
      return env.start(cfg, configPath(values.config, process.env, process.cwd()));
    case 'check-config': {
      const { source, ...rest } = cfg;
      process.stdout.write(`# effective configuration (from ${source})\n${stringify(rest)}\n`);
      return EXIT.ok;
    }
    case 'stop':
    case 'reload':
      return control(cfg, cmd);
    case 'queue':
      return queue(cfg, positionals, values.json === true);
    case 'newaliases':
      return newaliases(cfg);
    default:
      return usage('', `unknown command "${cmd}"`);
  }
}

function usage(cmd: string, msg: string): number {
  process.stderr.write(`palisade: ${msg}\n${HELP[cmd] ?? HELP['']}\n`);
  return EXIT.usage;
}

async function control(cfg: Config, cmd: 'stop' | 'reload'): Promise<number> {
  const store = new QueueStore(cfg.queue.dir);
  try {
    const answer = (await request(store.path('private', 'control'), { cmd })) as { ok: boolean; error?: string };
    if (!answer.ok) {
      process.stderr.write(`palisade: ${cmd} refused: ${answer.error ?? 'unknown error'}\n`);
      return cmd === 'reload' ? EXIT.config : EXIT.software;
    }
    process.stdout.write(`${cmd}: ok\n`);
    return EXIT.ok;
  } catch (e) {
    process.stderr.write(`palisade: Palisade is not running (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})\n`);
    return EXIT.tempFail;
  }
}

async function queue(cfg: Config, args: string[], json: boolean): Promise<number> {
  const [sub, id] = args;
  const store = new QueueStore(cfg.queue.dir);
  if (sub === 'list' || sub === undefined) {
    const entries = await store.list();
    if (json) process.stdout.write(JSON.stringify(entries.map(toJson)) + '\n');
    else process.stdout.write(formatList(entries));
    return EXIT.ok;
  }
  if (sub === 'show') {
    if (id === undefined) return usage('queue', 'queue show needs a queue ID');
    const e = QUEUE_ID.test(id) ? await store.show(id) : null;
    if (e === null) {
      process.stderr.write(`palisade: no message ${id} in the queue\n`);
      return EXIT.notFound;
    }
    process.stdout.write(json ? JSON.stringify(toJson(e), null, 2) + '\n' : formatShow(e));
    return EXIT.ok;
  }
  if (['hold', 'release', 'delete', 'requeue', 'flush'].includes(sub)) {
    if (sub !== 'flush' && id === undefined) return usage('queue', `queue ${sub} needs a queue ID`);
    if (id !== undefined && !QUEUE_ID.test(id)) {
      process.stderr.write(`palisade: no message ${id} in the queue\n`);
      return EXIT.notFound;
    }
    let answer: { ok: boolean; error?: string; code?: number };
    try {
      answer = (await request(store.path('private', 'control'), { cmd: 'queue', op: sub === 'flush' ? { cmd: 'flush' } : { cmd: sub, id } })) as typeof answer;
    } catch (e) {
      process.stderr.write(`palisade: Palisade is not running (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})\n`);
      return EXIT.tempFail;
    }
    if (!answer.ok) {
      process.stderr.write(`palisade: queue ${sub}: ${answer.error ?? 'failed'}\n`);
      return answer.code === 1 ? EXIT.notFound : EXIT.tempFail;
    }
    process.stdout.write(`queue ${sub}${id ? ` ${id}` : ''}: ok\n`);
    return EXIT.ok;
  }
  return usage('queue', `unknown queue command "${sub}"`);
}

/** The contract's JSON shape of one queue entry. */
export function toJson(e: QueueEntry): object {
  return {
    id: e.id,
    state: e.state === 'corrupt' ? 'hold' : e.state,
    sender: e.envelope.sender,
    arrival: e.envelope.arrival,
    recipients: e.recipients.map((r) => ({ address: r.address, state: r.state, last_reply: r.last_reply, next_retry: r.next_retry })),
  };
}

function formatList(entries: QueueEntry[]): string {
  if (entries.length === 0) return 'Mail queue is empty\n';
  let out = `${'Queue ID'.padEnd(17)}${'State'.padEnd(9)}${'Arrival'.padEnd(21)}Sender\n`;
  for (const e of entries) {
    out += `${e.id.padEnd(17)}${e.state.padEnd(9)}${e.envelope.arrival.slice(0, 19).padEnd(21)}${e.envelope.sender === '' ? '<>' : e.envelope.sender}\n`;
    for (const r of e.recipients) {
      out += `${''.padEnd(47)}${r.address}  [${r.state}]${r.last_reply ? ` (${r.last_reply})` : ''}\n`;
    }
  }
  return out + `-- ${entries.length} message${entries.length === 1 ? '' : 's'}\n`;
}

function formatShow(e: QueueEntry): string {
  const env = e.envelope;
  const lines = [
    `id:        ${e.id}`,
    `state:     ${e.state}`,
    `arrival:   ${env.arrival}`,
    `sender:    ${env.sender === '' ? '<>' : env.sender}`,
    `client:    [${env.client.ip}]:${env.client.port} helo=${env.client.helo} protocol=${env.client.protocol}`,
    ...(env.messageId ? [`message-id: ${env.messageId}`] : []),
    ...(env.envid !== undefined ? [`envid:     ${env.envid}`] : []),
    ...(env.ret ? [`ret:       ${env.ret}`] : []),
    `recipients:`,
    ...e.recipients.map((r, i) => {
      const er = env.recipients[i]!;
      const dsn = [er.notify ? `notify=${er.notify.length === 0 ? 'NEVER' : er.notify.join(',')}` : '', er.orcpt ? `orcpt=${er.orcpt}` : ''].filter(Boolean).join(' ');
      return `  ${r.address}  state=${r.state}${dsn ? ' ' + dsn : ''}\n    last reply: ${r.last_reply ?? '-'}\n    next retry: ${r.next_retry ?? '-'}`;
    }),
  ];
  return lines.join('\n') + '\n';
}

async function newaliases(cfg: Config): Promise<number> {
  if (cfg.local.aliases === '') {
    process.stdout.write('newaliases: no alias file configured (local.aliases)\n');
    return EXIT.ok;
  }
  const path = cfg.local.aliases.slice(5);
  let res;
  try {
    res = readAliases(path);
  } catch (e) {
    process.stderr.write(`newaliases: cannot read ${path}: ${(e as Error).message}\n`);
    return EXIT.dataErr;
  }
  for (const p of res.problems) process.stderr.write(`newaliases: ${path}:${p.line}: ${p.message}\n`);
  if (res.problems.length > 0) return EXIT.dataErr;
  // Not errors, but mail to these would bounce: say so while the operator is looking.
  for (const e of res.entries) {
    for (const t of e.targets) {
      if (t.startsWith('|') && !cfg.local.allow_commands) process.stderr.write(`newaliases: ${path}:${e.line}: warning: "${e.name}" delivers to a command, but [local] allow_commands is off: it bounces 5.7.1\n`);
      if (t.startsWith('/')) process.stderr.write(`newaliases: ${path}:${e.line}: warning: "${e.name}" delivers to a file, which Palisade does not do: it bounces 5.7.1\n`);
    }
  }
  process.stdout.write(`newaliases: ${path}: ${res.entries.length} aliases ok\n`);
  // As Postfix's newaliases makes a new table take effect: a running Palisade reloads (smtpd and the delivery
  // agents read the file when they start).
  const store = new QueueStore(cfg.queue.dir);
  let answer: { ok: boolean; error?: string };
  try {
    answer = (await request(store.path('private', 'control'), { cmd: 'reload' })) as { ok: boolean; error?: string };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') {
      process.stdout.write('newaliases: Palisade is not running; the aliases apply when it starts\n');
      return EXIT.ok;
    }
    process.stderr.write(`newaliases: cannot ask Palisade to reload (${code}); run "palisade reload" to use the new aliases\n`);
    return EXIT.tempFail;
  }
  if (!answer.ok) {
    process.stderr.write(`newaliases: the reload was refused: ${answer.error ?? 'unknown error'}\n`);
    return EXIT.config;
  }
  process.stdout.write('newaliases: Palisade reloaded; the new aliases are in use\n');
  return EXIT.ok;
}
