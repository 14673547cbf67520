// SPDX-License-Identifier: MIT
// lookup: lookup tables behind one interface (inline, file; LDAP and Redis later) and alias-file parsing.
// A library: no process of its own, reads only the files it is given.

export { createTable, type LookupTable } from './table.ts';
export { includePaths, parseAliases, readAliases, splitTargets, type AliasEntry, type AliasProblem } from './aliases.ts';
