// SPDX-License-Identifier: MIT
// DataReader: the DATA phase as a byte stream. Finds the only real end (CRLF "." CRLF), removes dot-stuffing
// (RFC 5321 §4.5.2), and marks — without stopping — content with a bare CR or LF or a NUL, so the session
// reads on to the real end and answers exactly once (closes the SMTP smuggling family, CVE-2023-51764).

/** What a chunk of DATA input produced. */
export interface DataResult {
  /** Unstuffed message bytes to pass on (CRLF line ends). */
  readonly out: Buffer[];
  /** Bytes of input consumed; when `done`, input after this offset is the next command. */
  readonly consumed: number;
  readonly done: boolean;
}

// A partial line longer than this is passed on without waiting for its end (lines are not length-bounded in
// storage; only memory is).
const MAX_CARRY = 8192;

/** Incremental DATA parser for one message. */
export class DataReader {
  /** The content had a bare CR or LF: the message must be refused with 550 5.5.2. */
  bareLineEnd = false;
  /** The content had a NUL byte. */
  nul = false;
  /** Bytes of message content seen (after unstuffing). */
  size = 0;
  private atLineStart = true;
  private carry: Buffer | null = null;
  // Set when the previous flushed fragment ended with CR that still awaits its LF.
  private pendingCr = false;

  /** Parses `input`; returns unstuffed output and whether the terminating line was seen. */
  push(input: Buffer): DataResult {
    let buf = input;
    let carryLen = 0;
    if (this.carry !== null) {
      carryLen = this.carry.length;
      buf = Buffer.concat([this.carry, input]);
      this.carry = null;
    }
    const out: Buffer[] = [];
    let pos = 0;
    const n = buf.length;
    while (pos < n) {
      if (this.pendingCr) {
        // The previous fragment ended in CR; it is a line end only if LF follows now.
        this.pendingCr = false;
        if (buf[pos] === 0x0a) {
          out.push(CRLF); // the CR was held back from the previous fragment (and already counted)
          this.size += 1;
          pos += 1;
          this.atLineStart = true;
          continue;
        }
        // A bare CR: flag it and pass it on after all (already counted), so the output does not depend on chunking.
        out.push(CR);
        this.bareLineEnd = true;
      }
      const lf = buf.indexOf(0x0a, pos);
      if (lf < 0) {
        // Partial line: keep it when short (it may be "." or ".\r"), else pass it on minus a trailing CR.
        const rest = buf.subarray(pos);
        if (rest.length <= MAX_CARRY) {
          this.carry = Buffer.from(rest);
          pos = n;
          break;
        }
        let frag = rest;
        this.checkLine(frag, true);
        if (this.atLineStart && frag[0] === 0x2e) frag = frag.subarray(1);
        const endsCr = frag[frag.length - 1] === 0x0d;
        if (endsCr) {
          frag = frag.subarray(0, frag.length - 1);
          this.pendingCr = true;
        }
        out.push(frag);
        this.size += frag.length + (endsCr ? 1 : 0);
        this.atLineStart = false;
        pos = n;
        break;
      }
      // A whole line buf[pos..lf].
      const crlf = lf > pos && buf[lf - 1] === 0x0d;
      if (!crlf) this.bareLineEnd = true;
      if (this.atLineStart && crlf && lf - pos === 2 && buf[pos] === 0x2e) {
        // "." CRLF at the start of a properly ended line: the end of DATA.
        return { out, consumed: lf + 1 - carryLen, done: true };
      }
      let start = pos;
      if (this.atLineStart && buf[pos] === 0x2e) start = pos + 1; // dot-unstuffing
      const line = buf.subarray(start, lf + 1);
      this.checkLine(line.subarray(0, crlf ? line.length - 2 : line.length - 1), false);
      out.push(line);
      this.size += line.length;
      // Only a CRLF-ended line starts a new line for end-of-data purposes (bare LF never does).
      this.atLineStart = crlf;
      pos = lf + 1;
    }
    return { out, consumed: input.length, done: false };
  }

  // Flags bare CR and NUL inside a line's content (the line end itself excluded).
  private checkLine(content: Buffer, partial: boolean): void {
    const limit = partial && content[content.length - 1] === 0x0d ? content.length - 1 : content.length;
    const cr = content.indexOf(0x0d);
    if (cr >= 0 && cr < limit) this.bareLineEnd = true;
    if (content.indexOf(0) >= 0) this.nul = true;
  }
}

const CRLF = Buffer.from('\r\n');
const CR = Buffer.from('\r');

/** Checks raw BDAT content (no dot-stuffing) for bare CR, bare LF and NUL across chunk boundaries. */
export class LineEndChecker {
  bareLineEnd = false;
  nul = false;
  private prevCr = false;
  private lastByte = -1;

  /** Inspects one slice of content. */
  push(b: Buffer): void {
    if (b.length === 0) return;
    if (this.prevCr && b[0] !== 0x0a) this.bareLineEnd = true;
    for (let i = b.indexOf(0x0a); i >= 0; i = b.indexOf(0x0a, i + 1)) {
      const before = i === 0 ? (this.prevCr ? 0x0d : -1) : b[i - 1];
      if (before !== 0x0d) this.bareLineEnd = true;
    }
    for (let i = b.indexOf(0x0d); i >= 0; i = b.indexOf(0x0d, i + 1)) {
      if (i + 1 < b.length && b[i + 1] !== 0x0a) this.bareLineEnd = true;
    }
    if (b.indexOf(0) >= 0) this.nul = true;
    this.lastByte = b[b.length - 1]!;
    this.prevCr = this.lastByte === 0x0d;
  }

  /** Content so far ends in the middle of a line (or with a lone CR). */
  get endsMidLine(): boolean {
    return this.lastByte !== -1 && this.lastByte !== 0x0a;
  }

  /** Content ends with a CR still waiting for its LF. */
  get pendingCr(): boolean {
    return this.prevCr;
  }
}
