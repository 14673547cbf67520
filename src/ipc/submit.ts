// SPDX-License-Identifier: MIT
// submit: hands one whole message to cleanup over its socket (begin frame, data frames, end) and returns
// cleanup's answer. Used by local injection paths (sendmail, alias forwarding, bounces).

import { connect } from 'node:net';
import { encodeData, encodeFrame, encodeJson, FrameDecoder } from './framing.ts';

/** Cleanup's answer, or a connection failure ("unavailable"). */
export type SubmitResult =
  | { readonly ok: true; readonly qid: string }
  | { readonly ok: false; readonly code: number; readonly text: string; readonly unavailable: boolean };

/** Sends `envelope` and the message parts to the cleanup socket at `path`. Never throws. */
export function submit(path: string, envelope: object, parts: AsyncIterable<Buffer> | Iterable<Buffer>, timeoutMs = 60_000): Promise<SubmitResult> {
  return new Promise((resolve) => {
    const sock = connect(path);
    const dec = new FrameDecoder();
    let settled = false;
    const done = (r: SubmitResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, code: 451, text: 'timeout talking to cleanup', unavailable: true }), timeoutMs);
    sock.on('connect', () => {
      void (async () => {
        sock.write(encodeJson({ type: 'begin', envelope }));
        for await (const p of parts) {
          for (const f of encodeData(p)) {
            if (!sock.write(f)) await new Promise((r) => sock.once('drain', r));
          }
        }
        sock.write(encodeFrame('end'));
      })().catch((e: Error) => done({ ok: false, code: 451, text: e.message, unavailable: true }));
    });
    sock.on('data', (c: Buffer) => {
      try {
        for (const f of dec.push(c)) {
          if (f.kind !== 'json') continue;
          const a = JSON.parse(f.payload.toString('utf8')) as { ok: boolean; qid?: string; code?: number; text?: string };
          if (a.ok && typeof a.qid === 'string') done({ ok: true, qid: a.qid });
          else done({ ok: false, code: a.code ?? 451, text: a.text ?? 'refused', unavailable: false });
        }
      } catch {
        done({ ok: false, code: 451, text: 'bad answer from cleanup', unavailable: false });
      }
    });
    sock.on('error', (e: NodeJS.ErrnoException) => done({ ok: false, code: 451, text: `cleanup unavailable (${e.code ?? e.message})`, unavailable: true }));
    sock.on('close', () => done({ ok: false, code: 451, text: 'cleanup closed the connection', unavailable: true }));
  });
}
