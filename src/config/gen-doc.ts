// SPDX-License-Identifier: MIT
// Writes docs/configuration.md from the schema (npm run docs:config).

import { writeFileSync } from 'node:fs';
import { renderConfigDoc } from './doc.ts';

writeFileSync(new URL('../../docs/configuration.md', import.meta.url), renderConfigDoc());
