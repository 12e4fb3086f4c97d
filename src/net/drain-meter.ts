// The link's rate as the sender sees it: bytes handed to the kernel since a backlog first
// showed (the kernel's buffers were full by then), over the time since. Short samples taken
// only while a backlog existed read twice the WAN's rate (they pick the moments buffers
// along the path had just been freed); the long run cannot. Time spent with nothing to
// send (holes scanned, a writer's pause) makes it read low: on the side of caution for
// every user (a stricter write cap, a higher zstd level).

// Observed on every frame sent and every drain: plain fields, no allocation per call.
export class DrainMeter {
  /** Where the first backlog began (fromAt < 0: none yet). */
  private fromAt = -1;
  private fromHanded = 0;
  private lastAt = 0;
  private lastHanded = 0;

  /** `handed`: bytes handed to the kernel so far; `backlog`: whether bytes wait for it now. */
  observe(at: number, handed: number, backlog: boolean): void {
    if (this.fromAt < 0 && backlog) {
      this.fromAt = at;
      this.fromHanded = handed;
    }
    this.lastAt = at;
    this.lastHanded = handed;
  }

  /** Bytes per ms, once the backlog began at least `minMs` ago; undefined before (or if it never did). */
  bytesPerMs(minMs: number): number | undefined {
    if (this.fromAt < 0 || this.lastAt - this.fromAt < minMs) return undefined;
    return (this.lastHanded - this.fromHanded) / (this.lastAt - this.fromAt) || undefined;
  }
}
