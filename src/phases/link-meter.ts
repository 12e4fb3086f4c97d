// The link's rate as the destination acknowledges it: the convergence controller's divisor.
// Only intervals that began with a backlog count: an idle link acknowledges what the VM
// wrote, not what the link could carry, and would make a fast link look slow. Samples are
// smoothed (EWMA) so one slow ACK does not swing the verdict.

const ALPHA = 0.3;
/** Shorter intervals say more about ACK timing (every 200 ms at most) than about the link. */
const MIN_INTERVAL_MS = 100;

export class LinkMeter {
  private rate?: number;
  private last?: { at: number; acked: number; backlog: boolean };

  /** `initial`: bytes per ms measured before (the bulk copy's), until the deltas say more. */
  constructor(initial?: number) {
    this.rate = initial && initial > 0 ? initial : undefined;
  }

  /** `acked`: wire bytes acknowledged so far; `backlog`: whether bytes waited to be sent now (the link was kept busy). */
  observe(at: number, acked: number, backlog: boolean): void {
    const last = this.last;
    if (!last || acked < last.acked) {
      this.last = { at, acked, backlog };
      return;
    }
    if (at - last.at < MIN_INTERVAL_MS) return;
    if (last.backlog && acked > last.acked) {
      const sample = (acked - last.acked) / (at - last.at);
      this.rate = this.rate === undefined ? sample : ALPHA * sample + (1 - ALPHA) * this.rate;
    }
    this.last = { at, acked, backlog };
  }

  /** Bytes per ms, if known. */
  bytesPerMs(): number | undefined {
    return this.rate;
  }
}
