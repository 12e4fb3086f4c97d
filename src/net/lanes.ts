// Several TCP connections as one ordered channel (--streams). One TCP stream over a long fat
// pipe moves at most its window per round trip (the kernel's tcp_wmem/tcp_rmem maxima: 4 MiB
// here, about 280 Mbit/s at 100 ms), so a faster link needs several.
//
// Order is kept the cheap way: the sender writes runs of frames, each run on one connection
// (a lane), and ends a run with NEXT {lane} on the lane it leaves. The receiver reads one lane
// until its NEXT, then the lane NEXT names, so the frames come out exactly in the order they
// were sent, and everything above the channel (bulk, deltas, barrier, fence, resume) sees one
// stream. No frame carries a sequence number; a lane's own order is TCP's.
//
// The sender starts a run on the lane with the least unsent backlog, so a lane slowed by a
// loss gets less; the receiver's head-of-line wait is one run. What a lane brings while the
// receiver reads another waits in that lane's inbox, bounded (channel.ts), and then in the
// kernel, whose window closes: memory stays bounded for any number of lanes.
//
// A lane that stalls (no byte, no close) would hold the others up for ever: the sender gives
// up on a lane whose backlog took no byte for STALL_MS, the receiver on a lane it waited on
// that long while later frames wait on others. Either closes the channel, which the source
// resumes on fresh connections like any broken link. STALL_MS is longer than the outages a
// WAN path has (a failover, a router's reboot: tens of seconds): through those TCP keeps the
// connections and retransmits what was in flight itself (its timer backs off to about 38 s
// after a 30 s outage at 100 ms), so nothing is sent twice; a new connection would resend
// everything in flight.

/** A run is at least this much: one bulk frame (4 MiB of data) is a run of its own; small deltas go together. */
export const RUN_BYTES = 512 * 1024;
/** No byte taken (sender) or brought (receiver) for this long, with work waiting: the lane is stalled. */
export const STALL_MS = 45_000;

/** Picks each frame's lane. */
export class StripeScheduler {
  private current = 0;
  private run = 0;

  /**
   * The lane for a frame of `bytes`; `from` is set when the run moves: the lane that gets the
   * NEXT marker first. `queued(i)`: lane i's unsent backlog.
   */
  place(bytes: number, lanes: number, queued: (lane: number) => number): { lane: number; from?: number } {
    let from: number | undefined;
    if (this.run >= RUN_BYTES && lanes > 1) {
      const next = leastQueued(this.current, lanes, queued);
      if (next !== this.current) {
        from = this.current;
        this.current = next;
      }
      this.run = 0;
    }
    this.run += bytes;
    return { lane: this.current, from };
  }
}

/** The lane with the least backlog; ties go round-robin from the one after `current`, so idle lanes take turns. */
function leastQueued(current: number, lanes: number, queued: (lane: number) => number): number {
  let best = -1;
  let bestQ = Number.POSITIVE_INFINITY;
  for (let k = 1; k <= lanes; k++) {
    const i = (current + k) % lanes;
    const q = queued(i);
    if (q < bestQ) {
      best = i;
      bestQ = q;
    }
  }
  return best;
}

/** One lane as the merger reads it. */
export interface LaneInbox<M> {
  /** The lane's next frame, if one has arrived. */
  take(): M | undefined;
  /** Frames arrived and not yet taken. */
  pending(): number;
}

/** What the merger made of the lanes: a frame, nothing yet, or a stalled lane. */
export type Merged<M> = { frame: M } | { wait: true } | { stalled: number };

/** Puts the lanes' frames back in the sender's order, following NEXT markers. */
export class StripeMerger<M> {
  private current = 0;
  private stuckSince?: number;

  constructor(
    /** The lane a frame says to continue on, if it is a NEXT marker. */
    private readonly nextOf: (m: M) => number | undefined,
    /** Lanes agreed: a NEXT naming another is a forged or broken stream. */
    private readonly maxLanes: number,
  ) {}

  /** The lane being read now. */
  get lane(): number {
    return this.current;
  }

  /** `lanes[i]` undefined: lane i has not joined yet (its NEXT can come first: wait for it). */
  take(lanes: readonly (LaneInbox<M> | undefined)[], now: number): Merged<M> {
    for (;;) {
      const lane = lanes[this.current];
      const m = lane?.take();
      if (m === undefined) return this.waiting(lanes, now);
      this.stuckSince = undefined;
      const next = this.nextOf(m);
      if (next === undefined) return { frame: m };
      if (next >= this.maxLanes) throw new RangeError(`NEXT names lane ${next}; this channel has ${this.maxLanes}`);
      this.current = next;
    }
  }

  /** Nothing on the lane being read: a stall once later frames have waited on another lane for STALL_MS. */
  private waiting(lanes: readonly (LaneInbox<M> | undefined)[], now: number): Merged<M> {
    const later = lanes.some((l, i) => i !== this.current && l && l.pending() > 0);
    if (!later) {
      this.stuckSince = undefined;
      return { wait: true };
    }
    this.stuckSince ??= now;
    return now - this.stuckSince >= STALL_MS ? { stalled: this.current } : { wait: true };
  }
}

/** Lanes with a backlog that took no byte for STALL_MS (sender side). */
export function stalledLane(lanes: readonly { queued: number; lastTakenAt: number }[], now: number): number | undefined {
  const i = lanes.findIndex((l) => l.queued > 0 && now - l.lastTakenAt >= STALL_MS);
  return i < 0 ? undefined : i;
}
