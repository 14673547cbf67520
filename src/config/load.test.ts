// SPDX-License-Identifier: MIT
// Unit tests for config loading: defaults, errors that name the key and its line, refused sections, exit code.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseConfig, ConfigError, lineOf, type Config } from './load.ts';

const CWD = '/srv/palisade';

function load(text: string): Config {
  return parseConfig(text, 'palisade.toml', CWD);
}

// The ConfigError that `text` must raise.
function errorOf(text: string): ConfigError {
  try {
    load(text);
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
    return e;
  }
  assert.fail(`expected ${JSON.stringify(text)} to be refused`);
}

describe('parseConfig', () => {
  test('gives a working default config for empty text', () => {
    const c = load('');
    assert.deepEqual(c.smtp.listen, ['127.0.0.1:2525']);
    assert.equal(c.smtp.max_message_size, 10_240_000);
    assert.equal(c.smtp.max_recipients, 1000);
    assert.equal(c.smtp.max_received_headers, 50);
    assert.equal(c.server.data_dir, `${CWD}/var`);
    assert.equal(c.queue.dir, `${CWD}/var/spool`);
    assert.equal(c.local.mailbox_dir, `${CWD}/var/mail`);
    assert.deepEqual(c.relay.trusted_networks, ['127.0.0.0/8', '::1/128']);
    assert.ok(c.local.domains.includes('localhost'));
    assert.ok(c.server.hostname !== '');
    assert.equal(c.source, 'palisade.toml');
  });

  test('returns a deeply frozen config', () => {
    const c = load('');
    assert.ok(Object.isFrozen(c));
    assert.ok(Object.isFrozen(c.smtp));
    assert.ok(Object.isFrozen(c.smtp.listen));
  });

  test('applies values from the file and normalises domains', () => {
    const c = load([
      '[server]',
      'hostname = "mx.example.com"',
      '[smtp]',
      'max_recipients = 100',
      'listen = ["[::1]:25", "0.0.0.0:2525"]',
      '[local]',
      'domains = ["Example.COM."]',
      '[relay]',
      'domains = ["Backup.Example"]',
      '[queue]',
      'dir = "q"',
    ].join('\n'));
    assert.equal(c.server.hostname, 'mx.example.com');
    assert.equal(c.smtp.max_recipients, 100);
    assert.deepEqual(c.smtp.listen, ['[::1]:25', '0.0.0.0:2525']);
    assert.deepEqual(c.local.domains, ['example.com']);
    assert.deepEqual(c.relay.domains, ['backup.example']);
    assert.equal(c.queue.dir, `${CWD}/q`);
  });

  test('resolves relative file paths against the working directory', () => {
    const c = load('[server]\ndata_dir = "/data"\n[local]\nrecipients = "file:etc/users"\naliases = "file:etc/aliases"\nmailbox_dir = "boxes"\n');
    assert.equal(c.local.recipients, `file:${CWD}/etc/users`);
    assert.equal(c.local.aliases, `file:${CWD}/etc/aliases`);
    assert.equal(c.local.mailbox_dir, '/data/boxes');
    assert.equal(c.queue.dir, '/data/spool');
  });

  test('defaults local domains to localhost and the configured hostname', () => {
    assert.deepEqual(load('[server]\nhostname = "MX.Example.com"\n').local.domains, ['localhost', 'mx.example.com']);
  });

  test('names an unknown key in a section with its dotted path and line number', () => {
    const e = errorOf('# comment\n[smtp]\nmax_recipients = 10\nmax_recipeints = 10\n');
    assert.equal(e.message, 'palisade.toml:4: unknown key "smtp.max_recipeints"');
  });

  test('names an unknown top-level key with its line number', () => {
    assert.equal(errorOf('\n\nbogus = 1\n').message, 'palisade.toml:3: unknown key "bogus"');
  });

  test('names an unknown section with the line of its header', () => {
    assert.equal(errorOf('[smtp]\n\n[smpt]\nx = 1\n').message, 'palisade.toml:3: unknown key "smpt"');
  });

  test('names an unknown sub-table with the line of its header', () => {
    assert.equal(errorOf('[smtp]\nmax_errors = 3\n[smtp.extra]\nx = 1\n').message, 'palisade.toml:3: unknown key "smtp.extra"');
  });

  test('reports a key that looks like a regular expression as unknown instead of crashing', () => {
    assert.equal(errorOf('"a(b" = 1\n').message, 'palisade.toml:1: unknown key "a(b"');
    assert.equal(errorOf('[smtp]\n"max[" = 1\n').message, 'palisade.toml:2: unknown key "smtp.max["');
  });

  test('reports keys named like Object.prototype members as unknown, not as later sections', () => {
    assert.equal(errorOf('toString = 1\n').message, 'palisade.toml:1: unknown key "toString"');
    assert.equal(errorOf('[constructor]\nx = 1\n').message, 'palisade.toml:1: unknown key "constructor"');
  });

  test('names the key and its line when a value has the wrong type', () => {
    const e = errorOf('[smtp]\nmax_recipients = "many"\n');
    assert.match(e.message, /^palisade\.toml:2: smtp\.max_recipients: /);
    assert.match(e.message, /expected number/);
  });

  test('names the key when a number is out of range', () => {
    assert.match(errorOf('[smtp]\nmax_recipients = 0\n').message, /^palisade\.toml:2: smtp\.max_recipients: /);
  });

  test('refuses a bad duration and shows examples of good ones', () => {
    const e = errorOf('[queue]\nretry_min = "5 minutes"\n');
    assert.match(e.message, /^palisade\.toml:2: queue\.retry_min: expected a duration such as "500ms", "30s"/);
  });

  test('names the element of a list that is invalid', () => {
    assert.match(errorOf('[smtp]\nlisten = ["127.0.0.1:25", "nowhere"]\n').message, /^palisade\.toml:2: smtp\.listen\.1: expected "address:port"/);
  });

  test('refuses an invalid CIDR in trusted networks', () => {
    assert.match(errorOf('[relay]\ntrusted_networks = ["10.0.0.0/33"]\n').message, /relay\.trusted_networks\.0: expected a CIDR network/);
  });

  test('refuses an invalid local domain', () => {
    assert.match(errorOf('[local]\ndomains = ["bad_domain.example"]\n').message, /local\.domains\.0: expected a domain name/);
  });

  test('refuses [tls] with a message saying it arrives with TLS support', () => {
    assert.equal(
      errorOf('[server]\nhostname = "a"\n[tls]\ncert = "x.pem"\n').message,
      'palisade.toml:3: [tls] is not supported by this build yet (TLS settings arrive with TLS support)',
    );
  });

  test('refuses [submissions] with a message saying it arrives with TLS support', () => {
    assert.equal(
      errorOf('[submissions]\nlisten = ["0.0.0.0:465"]\n').message,
      'palisade.toml:1: [submissions] is not supported by this build yet (implicit-TLS submissions arrive with TLS support)',
    );
  });

  test('reports a TOML syntax error with its line', () => {
    assert.match(errorOf('[smtp]\nmax_errors = = 3\n').message, /^palisade\.toml:2: TOML syntax error: /);
  });

  test('refuses initial_concurrency above concurrency', () => {
    assert.match(errorOf('[delivery]\nconcurrency = 2\ninitial_concurrency = 3\n').message, /delivery\.initial_concurrency \(3\) exceeds delivery\.concurrency \(2\)/);
  });

  test('reports every problem, one per line', () => {
    const e = errorOf('[smtp]\nfoo = 1\nmax_errors = "x"\n');
    assert.equal(e.message.split('\n').length, 2);
  });

  test('gives ConfigError the EX_CONFIG exit code 78', () => {
    assert.equal(errorOf('bogus = 1').exitCode, 78);
    assert.equal(new ConfigError('x').exitCode, 78);
  });
});

describe('values that would switch a limit off or break the protocol are refused, naming key and line', () => {
  const cases: [string, string, RegExp][] = [
    ['a zero command timeout', '[smtp]\ntimeout = "0s"\n', /:2: smtp\.timeout: must be at least "100ms"/],
    ['a zero stress timeout', '[smtp]\nstress_timeout = "0s"\n', /:2: smtp\.stress_timeout: must be at least "100ms"/],
    ['a zero scan interval (a busy loop)', '[queue]\nscan_interval = "0s"\n', /:2: queue\.scan_interval: must be at least "100ms"/],
    ['retry_max below retry_min', '[queue]\nretry_min = "10m"\nretry_max = "5m"\n', /:3: queue\.retry_max: must be at least retry_min/],
    ['a zero delivery timeout', '[delivery]\ntimeout = "0s"\n', /:2: delivery\.timeout: must be "" or at least "100ms"/],
    ['a zero DNS timeout', '[dns]\ntimeout = "0ms"\n', /:2: dns\.timeout: must be at least "100ms"/],
    ['a host name with a space and a line break', '[server]\nhostname = "bad host\\r\\nX"\n', /:2: server\.hostname: expected "" or a host name/],
    ['a transport key that is not a domain', '[transport]\n"not a domain!!" = "local"\n', /:2: transport\.not a domain!!: bad key: expected a domain/],
    ['a dotted key before any table', '# x\nsmtp.max_errors = 0\n', /:2: smtp\.max_errors: /],
    ['a per-destination key that is no destination', '[delivery.destinations]\n"no such thing!" = { concurrency = 1 }\n', /:2: delivery\.destinations\.no such thing!: bad key: expected a destination/],
    ['a per-destination window of 0', '[delivery.destinations."example.org"]\nconcurrency = 0\n', /:2: delivery\.destinations\.example\.org\.concurrency: /],
    ['a bracketed destination\'s bad value', '# x\n[delivery.destinations."[10.0.0.5]:25"]\nmax_recipients = 0\n', /:3: delivery\.destinations\.\[10\.0\.0\.5\]:25\.max_recipients: /],
    ['an unknown per-destination setting', '[delivery.destinations]\n"example.org" = { speed = 1 }\n', /:2: unknown key "delivery\.destinations\.example\.org\.speed"/],
    ['commands as the queue owner', '[local]\nallow_commands = true\ncommand_user = "palisade"\n', /:3: local\.command_user: must name a user other than root/],
  ];
  for (const [what, text, want] of cases) {
    test(what, () => {
      assert.match(errorOf(text).message, want);
    });
  }

  test('the same keys accept sensible values', () => {
    const c = load('[server]\nhostname = "mx.example.com"\n[queue]\nretry_min = "1s"\nretry_max = "1s"\nscan_interval = "200ms"\n[transport]\n".sub.example" = "local"\n"*" = "smtp:[127.0.0.1]:25"\n');
    assert.equal(c.server.hostname, 'mx.example.com');
  });
});

describe('lineOf', () => {
  const text = '[smtp]\nlisten = []\n\n[queue]\n"dir" = "x"\n';

  test('finds a key inside its section, bare or quoted', () => {
    assert.equal(lineOf(text, ['smtp', 'listen']), '2');
    assert.equal(lineOf(text, ['queue', 'dir']), '5');
  });

  test('falls back to the section header for a key that is not written', () => {
    assert.equal(lineOf(text, ['queue', 'lifetime']), '4');
  });

  test('answers "?" for a section that is not written', () => {
    assert.equal(lineOf(text, ['dns', 'timeout']), '?');
    assert.equal(lineOf(text, []), '?');
  });
});

describe('config properties', () => {
  const PIECES = [
    '[smtp]', '[queue]', '[tls]', '[server]', '[x.y]', '[[a]]', '\n', ' = ', '=', '"', "'", '[', ']', '{', '}', ',', '#',
    'max_recipients', 'listen', 'dir', 'domains', 'toString', '__proto__', 'constructor', '(', '*', '+', '\\', '1', '"5m"',
    'true', '["127.0.0.1:25"]', '[]', '.', 'ü', '\u0000',
  ];
  const tomlish = fc.array(fc.constantFrom(...PIECES), { maxLength: 30 }).map((xs) => xs.join(''));

  test('any text gives a config or a ConfigError, never another exception', () => {
    fc.assert(
      fc.property(fc.oneof(tomlish, fc.string({ maxLength: 60 })), (text) => {
        try {
          load(text);
        } catch (e) {
          assert.ok(e instanceof ConfigError, `${JSON.stringify(text)} threw ${String(e)}`);
          assert.match(e.message, /^palisade\.toml(:[0-9?]+)?: /);
        }
      }),
      { numRuns: 300 },
    );
  });
});
