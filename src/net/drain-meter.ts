// The link's rate as the sender sees it: bytes handed to the kernel since a backlog first
// showed (the kernel's buffers were full by then), over the time since. Short samples taken
// only while a backlog existed read twice the WAN's rate (they pick the moments buffers
// along the path had just been freed); the long run cannot. Time spent with nothing to
// send (holes scanned, a writer's pause) makes it read low: on the side of caution for
// every user (a stricter write cap, a higher zstd level).

export class DrainMeter {
  private from?: { at: number; handed: number };
  private last?: { at: number; handed: number };

  /** `handed`: bytes handed to the kernel so far; `backlog`: whether bytes wait for it now. */
  observe(at: number, handed: number, backlog: boolean): void {
    if (!this.from && backlog) this.from = { at, handed };
    this.last = { at, handed };
  }

  /** Bytes per ms, once the backlog began at least `minMs` ago; undefined before (or if it never did). */
  bytesPerMs(minMs: number): number | undefined {
    const { from, last } = this;
    if (!from || !last || last.at - from.at < minMs) return undefined;
    return (last.handed - from.handed) / (last.at - from.at) || undefined;
  }
}
