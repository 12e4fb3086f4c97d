// Ordered writes to a non-blocking stream whose write() may take only part of a buffer
// (Bun sockets). The rest waits here, in order, until the stream drains; `queued` tells
// the owner when to apply backpressure.

export interface PartialWriter {
  /** Bytes taken now, or -1 once closed. */
  write(b: Uint8Array): number;
}

export class SocketWriter {
  private queue: Uint8Array[] = [];
  /** Bytes accepted but not yet handed to the stream. */
  queued = 0;
  closed = false;

  constructor(private readonly stream: PartialWriter) {}

  write(b: Uint8Array): void {
    if (this.closed) return;
    if (this.queue.length) {
      this.queue.push(b);
      this.queued += b.length;
      return;
    }
    const n = this.stream.write(b);
    if (n < 0) {
      this.closed = true;
      return;
    }
    if (n < b.length) {
      this.queue.push(b.subarray(n));
      this.queued += b.length - n;
    }
  }

  /** Call from the stream's drain event; true once everything queued is written. */
  drain(): boolean {
    while (this.queue.length) {
      const b = this.queue[0]!;
      const n = this.stream.write(b);
      if (n < 0) {
        this.closed = true;
        return false;
      }
      this.queued -= n;
      if (n < b.length) {
        this.queue[0] = b.subarray(n);
        return false;
      }
      this.queue.shift();
    }
    return true;
  }

  /** Drops what is queued (the peer is gone). */
  discard(): void {
    this.queue = [];
    this.queued = 0;
    this.closed = true;
  }
}
