// SPDX-License-Identifier: MIT
// config: one TOML file → a validated, frozen, typed config object with safe defaults.
// Owns: the schema, defaults, error messages naming key and line. Must not: start anything or read files at import.

export { configSchema, parseListen, LATER_SECTIONS } from './schema.ts';
export { loadConfig, parseConfig, configPath, ConfigError, lineOf, type Config } from './load.ts';
