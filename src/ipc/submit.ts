// SPDX-License-Identifier: MIT
// exchange: one request over a Unix socket to a service (a header frame, the message as data frames, end) and
// the service's one JSON answer. submit: that exchange with cleanup (used by local injection paths: sendmail,
// alias forwarding, bounces).

import { connect } from 'node:net';
import { encodeData, encodeFrame, encodeJson, FrameDecoder } from './framing.ts';

/** The service's answer, or why there is none ("unavailable": no connection, timeout or an early close). */
export type ExchangeResult =
  | { readonly ok: true; readonly answer: Record<string, unknown> }
  | { readonly ok: false; readonly error: string; readonly unavailable: boolean };

/** Sends `header` and the message parts to the service at `path` and resolves with its answer. Never throws. */
export function exchange(path: string, header: object, parts: AsyncIterable<Buffer> | Iterable<Buffer>, timeoutMs: number, service = 'service'): Promise<ExchangeResult> {
  return new Promise((resolve) => {
    const sock = connect(path);
    const dec = new FrameDecoder();
    let settled = false;
    const done = (r: ExchangeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, error: `timeout talking to ${service}`, unavailable: true }), timeoutMs);
    sock.on('connect', () => {
      void (async () => {
        sock.write(encodeJson(header));
        for await (const p of parts) {
          for (const f of encodeData(p)) {
            if (!sock.write(f)) await new Promise((r) => sock.once('drain', r));
          }
        }
        sock.write(encodeFrame('end'));
      })().catch((e: Error) => done({ ok: false, error: e.message, unavailable: true }));
    });
    sock.on('data', (c: Buffer) => {
      try {
        for (const f of dec.push(c)) {
          if (f.kind !== 'json') continue;
          const a: unknown = JSON.parse(f.payload.toString('utf8'));
          if (typeof a === 'object' && a !== null) done({ ok: true, answer: a as Record<string, unknown> });
          else done({ ok: false, error: `bad answer from ${service}`, unavailable: false });
        }
      } catch {
        done({ ok: false, error: `bad answer from ${service}`, unavailable: false });
      }
    });
    sock.on('error', (e: NodeJS.ErrnoException) => done({ ok: false, error: `${service} unavailable (${e.code ?? e.message})`, unavailable: true }));
    sock.on('close', () => done({ ok: false, error: `${service} closed the connection`, unavailable: true }));
  });
}

/** Cleanup's answer, or a connection failure ("unavailable"). */
export type SubmitResult =
  | { readonly ok: true; readonly qid: string }
  | { readonly ok: false; readonly code: number; readonly text: string; readonly unavailable: boolean };

/** Sends `envelope` and the message parts to the cleanup socket at `path`. Never throws. */
export async function submit(path: string, envelope: object, parts: AsyncIterable<Buffer> | Iterable<Buffer>, timeoutMs = 60_000): Promise<SubmitResult> {
  const r = await exchange(path, { type: 'begin', envelope }, parts, timeoutMs, 'cleanup');
  if (!r.ok) return { ok: false, code: 451, text: r.error, unavailable: r.unavailable };
  const a = r.answer as { ok?: boolean; qid?: unknown; code?: number; text?: string };
  if (a.ok === true && typeof a.qid === 'string') return { ok: true, qid: a.qid };
  return { ok: false, code: a.code ?? 451, text: a.text ?? 'refused', unavailable: false };
}
