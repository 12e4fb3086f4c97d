// Large buffers kept for reuse. A new multi-MiB buffer per frame or reply costs page faults
// on fresh memory, the slowest memory these machines have: on a loopback migration, 23 %
// of the destination's time (frame assembly) and 7-10 % of the source's (framing).
// A buffer goes back to the pool once nothing holds a view of it: the receiver applied the
// frame's data, or the socket took a whole frame or reply (a Bun socket copies what it
// takes into the kernel). Taking a buffer removes it from the pool, so two messages built
// at once never share one. New buffers are at least `allocBytes`, so that one pool buffer
// fits the frames of any size that come later.

export class BufferPool {
  private readonly spare: ArrayBuffer[] = [];
  /** Buffers handed out by take() and not yet released: release() ignores any other. */
  private readonly owned = new WeakSet<ArrayBuffer>();

  constructor(
    private readonly o: {
      /** Smaller requests get a buffer of their own (control messages, 4 KiB replies). */
      minBytes: number;
      /** A new pool buffer's size at least. */
      allocBytes: number;
      /** Buffers kept when released; more are made while more are held. */
      keep: number;
    },
  ) {}

  /** `n` bytes: a pooled buffer if `n` is large enough to pool, else a new one. */
  take(n: number): Buffer {
    if (n < this.o.minBytes) return Buffer.allocUnsafe(n);
    const i = this.spare.findIndex((b) => b.byteLength >= n);
    const ab = i >= 0 ? this.spare.splice(i, 1)[0]! : new ArrayBuffer(Math.max(n, this.o.allocBytes));
    this.owned.add(ab);
    return Buffer.from(ab, 0, n);
  }

  /** Nothing holds a view of `b` (from take) any more: it may serve a later take. */
  release(b: Uint8Array): void {
    const ab = b.buffer as ArrayBuffer;
    if (!this.owned.has(ab)) return;
    this.owned.delete(ab);
    if (this.spare.length < this.o.keep) this.spare.push(ab);
  }
}
