// SPDX-License-Identifier: MIT
// WritePacer: chooses how cleanup makes a message durable. A synchronous write to an O_DSYNC file returns
// once the disk has it, with no hand-off to libuv's thread pool (two wake-ups fewer on the way to the 250),
// but it stops the whole process for the disk's latency. That is free only when nothing else was waiting.

/** Synchronous when cleanup is idle, asynchronous (thread pool, writes overlap) when it is busy. */
export class WritePacer {
  // End of the last durable write (ms, performance.now()), and a running mean of synchronous write times.
  private lastEnd = Number.NEGATIVE_INFINITY;
  private syncMs = 0.25;
  private inFlight = 0;

  /**
   * True = write synchronously now. Only when no asynchronous write is in flight and the time since the last
   * write ended is more than twice what a synchronous write has been taking: a process that was idle that
   * long had nothing queued behind this write. Under load writes come back to back and go to the pool.
   */
  sync(now: number): boolean {
    return this.inFlight === 0 && now - this.lastEnd > 2 * this.syncMs;
  }

  /** A synchronous write from `start` to `end` (ms). */
  syncDone(start: number, end: number): void {
    this.sample(end - start);
    this.lastEnd = end;
  }

  private sample(ms: number): void {
    this.syncMs = this.syncMs * 0.8 + ms * 0.2;
  }

  /** An asynchronous write begins. */
  asyncStart(): void {
    this.inFlight++;
  }

  /** An asynchronous write ended (successfully or not) at `end`. */
  asyncDone(end: number): void {
    this.inFlight--;
    this.lastEnd = end;
  }

  // Asynchronous writes started so far (tells whether another one overlapped a given write).
  private started = 0;

  /**
   * Runs `write` (an asynchronous durable write) counted as in flight until it settles. `learn`: it is the kind
   * of write a synchronous one would have been (a whole message into a reserved file), so its time counts
   * toward the estimate; an fsync after streaming a large message does not.
   */
  async pooled<T>(write: () => Promise<T>, learn = false): Promise<T> {
    const alone = this.inFlight === 0;
    const seq = ++this.started;
    const start = performance.now();
    this.asyncStart();
    try {
      return await write();
    } finally {
      const end = performance.now();
      // A write that overlapped no other one measures the disk much as a synchronous write would. Without
      // these samples the estimate would only ever follow synchronous writes, so after a burst of slow ones it
      // could stay too high for cleanup ever to be idle enough for another: pooled writes for good.
      if (learn && alone && seq === this.started) this.sample(end - start);
      this.asyncDone(end);
    }
  }
}
