// SPDX-License-Identifier: MIT
// Exit codes of the contract (sysexits.h values).

/** 0 success, 1 not found, 64 usage, 65 bad data, 69 unavailable, 70 internal, 75 temporary, 78 config. */
export const EXIT = { ok: 0, notFound: 1, usage: 64, dataErr: 65, unavailable: 69, software: 70, tempFail: 75, config: 78 } as const;
