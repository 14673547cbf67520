// SPDX-License-Identifier: MIT
// ipc: framed messages over Unix sockets between Palisade processes (smtpd → cleanup, cli → master).
// Must not: know about SMTP or the queue; it only moves frames.

export { encodeFrame, encodeJson, frameHeader, encodeData, FrameDecoder, framesOrDrop, MAX_FRAME, KIND, type Frame, type FrameKind } from './framing.ts';
export { request, RequestPool } from './request.ts';
export { submit, exchange, type SubmitResult, type ExchangeResult } from './submit.ts';
