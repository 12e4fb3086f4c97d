// The link's rate as the destination acknowledges it: the convergence controller's divisor.
// Only intervals that began with a backlog count: an idle link acknowledges what the VM
// wrote, not what the link could carry, and would make a fast link look slow. Samples are
// smoothed (EWMA) so one slow ACK does not swing the verdict.

const ALPHA = 0.3;
/** Shorter intervals say more about ACK timing (every 200 ms at most) than about the link. */
const MIN_INTERVAL_MS = 100;
/**
 * With the sender's drain meter: an interval counts only if its kernel buffers were full for
 * this share of it. Unsent bytes here do not mean the link was busy: a record written after
 * a quiet spell goes out at once, and the ACK of bytes sent long before lands in its
 * interval. On the paper's 5 Mbit/s WAN such ACKs read 4.6 KB/ms, 7 times the link, and
 * the estimate of a 33 MB queue fell from 52 s to 7 s.
 */
const MIN_BUSY_SHARE = 0.25;

/** The sender's drain meter (channel.ts drainTotals): time its kernel buffers were full, and the bytes they took then. */
export interface DrainReading {
  busyMs: number;
  busyBytes: number;
}

export class LinkMeter {
  private rate?: number;
  private last?: { at: number; acked: number; backlog: boolean; drain?: DrainReading };

  /** `initial`: bytes per ms measured before (the bulk copy's), until the deltas say more. */
  constructor(initial?: number) {
    this.rate = initial && initial > 0 ? initial : undefined;
  }

  /**
   * `acked`: wire bytes acknowledged so far; `backlog`: whether bytes waited to be sent now
   * (the link was kept busy); `drain`: the sender's drain meter now, which also bounds a
   * sample: the destination cannot acknowledge faster than the link took the bytes.
   */
  observe(at: number, acked: number, backlog: boolean, drain?: DrainReading): void {
    const last = this.last;
    if (!last || acked < last.acked) {
      this.last = { at, acked, backlog, drain };
      return;
    }
    if (at - last.at < MIN_INTERVAL_MS) return;
    if (last.backlog && acked > last.acked) {
      const sample = this.sample(at - last.at, acked - last.acked, last.drain, drain);
      if (sample !== undefined) this.rate = this.rate === undefined ? sample : ALPHA * sample + (1 - ALPHA) * this.rate;
    }
    this.last = { at, acked, backlog, drain };
  }

  private sample(ms: number, ackedBytes: number, from?: DrainReading, to?: DrainReading): number | undefined {
    const acks = ackedBytes / ms;
    if (!from || !to) return acks;
    const busyMs = to.busyMs - from.busyMs;
    if (busyMs < MIN_BUSY_SHARE * ms) return undefined;
    return Math.min(acks, (to.busyBytes - from.busyBytes) / busyMs);
  }

  /** Bytes per ms, if known. */
  bytesPerMs(): number | undefined {
    return this.rate;
  }
}
