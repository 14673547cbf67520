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

  /**
   * Parses `input`; returns unstuffed output and whether the terminating line was seen. Output comes in
   * contiguous runs of the input (split only where a stuffing dot is dropped), not one buffer per line.
   */
  push(input: Buffer): DataResult {
    const carry = this.carry;
    if (carry === null) return this.scan(input, 0);
    this.carry = null;
    // Finish the carried partial line with the input up to its first LF (a small copy), then scan the rest of
    // the input in place: the input itself is never copied.
    const lf = input.indexOf(0x0a);
    if (lf < 0 || lf === input.length - 1) return this.scan(Buffer.concat([carry, input]), carry.length);
    const first = this.scan(Buffer.concat([carry, input.subarray(0, lf + 1)]), carry.length);
    if (first.done) return first;
    const rest = this.scan(input.subarray(lf + 1), 0);
    return { out: first.out.concat(rest.out), consumed: lf + 1 + rest.consumed, done: rest.done };
  }

  // Scans `buf`, whose first `carryLen` bytes are the carried partial line; `consumed` counts input bytes only.
  private scan(buf: Buffer, carryLen: number): DataResult {
    const out: Buffer[] = [];
    let pos = 0;
    let run = 0; // start of the output run not yet pushed
    const n = buf.length;
    const emit = (end: number): void => {
      if (end > run) {
        out.push(buf.subarray(run, end));
        this.size += end - run;
      }
    };
    while (pos < n) {
      if (this.pendingCr) {
        // The previous fragment ended in CR (held back, already counted); it is a line end only if LF follows.
        this.pendingCr = false;
        if (buf[pos] === 0x0a) {
          out.push(CRLF);
          this.size += 1;
          pos += 1;
          run = pos;
          this.atLineStart = true;
          continue;
        }
        // A bare CR: flag it and pass it on after all, so the output does not depend on chunking.
        out.push(CR);
        this.bareLineEnd = true;
      }
      const lf = buf.indexOf(0x0a, pos);
      if (lf < 0) {
        // Partial line: keep it when short (it may be "." or ".\r"), else pass it on minus a trailing CR.
        if (n - pos <= MAX_CARRY) {
          emit(pos);
          this.carry = Buffer.from(buf.subarray(pos));
          run = n;
          pos = n;
          break;
        }
        this.checkContent(buf, pos, buf[n - 1] === 0x0d ? n - 1 : n);
        if (this.atLineStart && buf[pos] === 0x2e) {
          emit(pos);
          run = pos + 1;
        }
        if (buf[n - 1] === 0x0d && n - 1 >= run) {
          emit(n - 1);
          this.size += 1; // the held-back CR counts now
          run = n;
          this.pendingCr = true;
        }
        this.atLineStart = false;
        pos = n;
        break;
      }
      // A whole line buf[pos..lf].
      const crlf = lf > pos && buf[lf - 1] === 0x0d;
      if (!crlf) this.bareLineEnd = true;
      if (this.atLineStart && crlf && lf - pos === 2 && buf[pos] === 0x2e) {
        // "." CRLF at the start of a properly ended line: the end of DATA.
        emit(pos);
        this.checkNul(buf, pos);
        return { out, consumed: lf + 1 - carryLen, done: true };
      }
      if (this.atLineStart && buf[pos] === 0x2e) {
        // Dot-unstuffing: drop the first dot of the line.
        emit(pos);
        run = pos + 1;
      }
      this.checkContent(buf, pos, crlf ? lf - 1 : lf);
      // Only a CRLF-ended line starts a new line for end-of-data purposes (bare LF never does).
      this.atLineStart = crlf;
      pos = lf + 1;
    }
    emit(pos);
    this.checkNul(buf, n);
    return { out, consumed: n - carryLen, done: false };
  }

  // Flags a bare CR in buf[from..to) (a line's content, its line end excluded). Once flagged, no more
  // scanning: the search runs to the next CR, which for a line without one may be far ahead.
  private checkContent(buf: Buffer, from: number, to: number): void {
    if (to <= from || this.bareLineEnd) return;
    const cr = buf.indexOf(0x0d, from);
    if (cr >= 0 && cr < to) this.bareLineEnd = true;
  }

  // Flags a NUL in buf[0..to): one scan per push, not one per line.
  private checkNul(buf: Buffer, to: number): void {
    if (!this.nul && to > 0 && buf.subarray(0, to).indexOf(0) >= 0) this.nul = true;
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
