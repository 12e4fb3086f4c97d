// Bytes received from a stream socket, consumed in protocol-sized pieces.
// `take` returns a view into the received chunk when the piece lies inside one chunk
// (the common case for headers and small writes), so no copy is made; callers that keep
// a piece past the current callback must copy it themselves.

export class ByteQueue {
  private chunks: Uint8Array[] = [];
  private head = 0; // read position inside chunks[0]
  length = 0;

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Removes and returns the next `n` bytes; the caller checked `length >= n`. */
  take(n: number): Uint8Array {
    if (n === 0) return new Uint8Array(0);
    const first = this.chunks[0]!;
    const avail = first.length - this.head;
    if (n <= avail) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = new Uint8Array(n);
    this.takeInto(out);
    return out;
  }

  /** Copies the next `into.length` bytes into `into` and removes them; the caller checked `length`. */
  takeInto(into: Uint8Array): void {
    for (let filled = 0; filled < into.length; ) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length - this.head, into.length - filled);
      into.set(c.subarray(this.head, this.head + k), filled);
      filled += k;
      this.advance(k);
    }
  }

  /** Copies the next `into.length` bytes into `into`, leaving them queued; the caller checked `length`. */
  peekInto(into: Uint8Array): void {
    for (let filled = 0, i = 0, at = this.head; filled < into.length; i++, at = 0) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length - at, into.length - filled);
      into.set(c.subarray(at, at + k), filled);
      filled += k;
    }
  }

  /**
   * Removes the next `n` bytes as views of the chunks they arrived in: one view if they lie
   * in one chunk, else the pieces (no copy; the caller checked `length >= n`).
   */
  takePayload(n: number): Uint8Array | Uint8Array[] {
    const first = this.chunks[0];
    if (n === 0 || !first || n <= first.length - this.head) return this.take(n);
    const pieces: Uint8Array[] = [];
    for (let left = n; left > 0; ) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length - this.head, left);
      pieces.push(c.subarray(this.head, this.head + k));
      left -= k;
      this.advance(k);
    }
    return pieces;
  }

  /** Discards up to `n` bytes and returns how many were discarded. */
  skip(n: number): number {
    const k = Math.min(n, this.length);
    let left = k;
    while (left > 0) {
      const c = this.chunks[0]!;
      const step = Math.min(c.length - this.head, left);
      this.advance(step);
      left -= step;
    }
    return k;
  }

  private advance(n: number): void {
    this.head += n;
    this.length -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
