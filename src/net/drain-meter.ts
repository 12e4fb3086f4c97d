// The link's rate as the sender sees it: bytes handed to the kernel over the time they
// waited for it. Only the stretches that began with a backlog count (bytes waiting here:
// the kernel's buffers were full, so what it took since is what the link drained). Time
// with nothing waiting (holes scanned, a level-19 unit compressing, a pause of the writer)
// says nothing of the link and is left out: counted, it made a 2 MB/s link read 0.27 MB/s
// after a stall of the receiver, and the bulk throttle held a 1 MiB write of the VM 7 s.
// A stall of the path with bytes waiting counts: that is the path's rate.
// Stretches are summed over the connection's life, not sampled one by one: a short one
// catches the moment buffers along the path were freed and reads far above the link.

// Observed on every frame sent and every drain: plain fields, no allocation per call.
export class DrainMeter {
  private lastAt = -1;
  private lastHanded = 0;
  private lastBacklog = false;
  private busyMs = 0;
  private busyBytes = 0;

  /** `handed`: bytes handed to the kernel so far; `backlog`: whether bytes wait for it now. */
  observe(at: number, handed: number, backlog: boolean): void {
    if (this.lastBacklog && at > this.lastAt) {
      this.busyMs += at - this.lastAt;
      this.busyBytes += handed - this.lastHanded;
    }
    this.lastAt = at;
    this.lastHanded = handed;
    this.lastBacklog = backlog;
  }

  /** The backlogged time and the bytes drained in it, so far: two readings give the rate between them. */
  totals(): { busyMs: number; busyBytes: number } {
    return { busyMs: this.busyMs, busyBytes: this.busyBytes };
  }

  /** Bytes per ms, once backlogged stretches add up to `minMs`; undefined before (or if there never was one). */
  bytesPerMs(minMs: number): number | undefined {
    if (this.busyMs < minMs) return undefined;
    return this.busyBytes / this.busyMs || undefined;
  }
}
