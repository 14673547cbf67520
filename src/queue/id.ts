// SPDX-License-Identifier: MIT
// Queue IDs: 16 Crockford base32 characters = 48-bit milliseconds + 30 random bits, sortable by time.

import { randomInt } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const RANDOM_SPACE = 2 ** 30;

/** A queue ID is exactly this: the file name in every state directory. */
export const QUEUE_ID = /^[0-9A-HJKMNP-TV-Z]{16}$/;

function encode(value: number, chars: number): string {
  let out = '';
  for (let i = 0; i < chars; i++) {
    out = ALPHABET[value % 32]! + out;
    value = Math.floor(value / 32);
  }
  return out;
}

/**
 * Makes IDs for one writer process. Within a process IDs strictly increase (same millisecond: the random part
 * counts up), so one writer never repeats an ID; the random start keeps writers apart (O_EXCL catches the rest).
 */
export function createIdGenerator(now: () => number = Date.now): () => string {
  let lastMs = -1;
  let lastRand = 0;
  return () => {
    let ms = now();
    let rand: number;
    if (ms <= lastMs) {
      ms = lastMs;
      rand = lastRand + 1;
      if (rand >= RANDOM_SPACE) {
        ms = lastMs + 1;
        rand = randomInt(RANDOM_SPACE / 2);
      }
    } else {
      rand = randomInt(RANDOM_SPACE / 2);
    }
    lastMs = ms;
    lastRand = rand;
    return encode(ms, 10) + encode(rand, 6);
  };
}

/** The arrival time encoded in an ID (milliseconds since the epoch). */
export function idTime(id: string): number {
  let v = 0;
  for (let i = 0; i < 10; i++) v = v * 32 + ALPHABET.indexOf(id[i]!);
  return v;
}
