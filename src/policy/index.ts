// SPDX-License-Identifier: MIT
// policy: decisions about clients shared across smtpd workers — for now the anvil (session counts).
// A library: holds no sockets; the process that runs it (master) answers the workers.

export { Anvil, type Admission, type AnvilLimits } from './anvil.ts';
