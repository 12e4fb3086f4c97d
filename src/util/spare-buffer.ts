// One large buffer kept for reuse by a sender whose writer copies what it takes (a Bun
// socket: bytes taken are in the kernel). A new multi-MiB buffer per message costs page
// faults on fresh memory, which on these machines is the slowest memory there is; a
// buffer whose bytes the socket took whole is free at once and takes the next message.
// Taking the spare removes it, so two messages being built at once never share it.

export class SpareBuffer {
  private spare?: ArrayBuffer;

  /** `minBytes`: smaller messages are not worth it (and may come from Buffer's shared pool). */
  constructor(private readonly minBytes: number) {}

  /** A buffer of `n` bytes: the spare if it is large enough, else a new one. */
  take(n: number): Buffer {
    const s = this.spare;
    if (n < this.minBytes || !s || s.byteLength < n) return Buffer.allocUnsafe(n);
    this.spare = undefined;
    return Buffer.from(s, 0, n);
  }

  /** `b` (from take) was written whole and nothing holds it: it may be the spare. */
  release(b: Uint8Array): void {
    if (this.spare || b.length < this.minBytes || b.byteOffset !== 0) return;
    this.spare = b.buffer as ArrayBuffer;
  }
}
