// When to fence, and how hard to hold the VM's writes back so that the moment comes
// (issue 12). The paper throttles on a fixed queue length; QEMU's migration_iteration_run
// compares an expected downtime (what is left over the measured bandwidth) with its
// downtime-limit. We do the latter for the disk: the hand-off's cost, were the source
// fenced now, is estimated from what is measured as the migration runs:
//   - bytes still to cross: unsent log (at the compression ratio seen so far) plus sent and
//     unacknowledged, over the rate at which the destination has been acknowledging;
//   - the digest work: what the rehash would read, over the measured hash rate (both ends
//     hash the same pieces, at the same time: the barrier goes out before the digest);
//   - the fence and dirty-map calls to the serve, as measured;
//   - one round trip (barrier out, DONE back), which no policy can shrink: the budget is
//     for the rest, so a WAN's downtime is one RTT plus the budget.
// Fence once the estimate fits. While it does not, and does not shrink either (the VM
// writes as fast as the link ships), step the throttle up: each level halves the write rate
// the VM is allowed, from just under the link's rate. Levels never come down within a
// migration: the estimate falls *because* of the cap, and lifting it (tried: a step down
// when the estimate halved) let a full-speed writer rebuild the backlog within seconds.

export interface HandoffInputs {
  /** Log bytes not yet sent (raw). */
  queuedBytes: number;
  /** Bytes sent and not yet acknowledged (on the wire, compressed). */
  unackedWireBytes: number;
  /** Wire bytes per raw byte so far (1 without compression). */
  compressionRatio: number;
  /** Measured: wire bytes the destination acknowledged per ms while a backlog existed. */
  linkBytesPerMs?: number;
  rttMs: number;
  /** What the digest refresh at the fence would read (RegionDigests.pendingBytes). */
  hashBytes: number;
  /** Measured rehash speed (bytes per ms). */
  hashBytesPerMs?: number;
  /** The serve's fence and dirty-map calls, measured as control round trips. */
  controlMs: number;
}

export interface HandoffEstimate {
  totalMs: number;
  /** What the budget is compared with: all but the round trip. */
  workMs: number;
  parts: { transferMs: number; digestMs: number; controlMs: number; rttMs: number };
}

/** Until measured: a pessimistic 1 MB/s link and 200 MB/s of hashing. */
const ASSUMED_LINK_BYTES_PER_MS = 1000;
const ASSUMED_HASH_BYTES_PER_MS = 200_000;

export function estimateHandoff(i: HandoffInputs): HandoffEstimate {
  const wire = i.queuedBytes * i.compressionRatio + i.unackedWireBytes;
  const transferMs = wire / (i.linkBytesPerMs ?? ASSUMED_LINK_BYTES_PER_MS);
  const digestMs = i.hashBytes / (i.hashBytesPerMs ?? ASSUMED_HASH_BYTES_PER_MS);
  const workMs = transferMs + digestMs + i.controlMs;
  return { totalMs: workMs + i.rttMs, workMs, parts: { transferMs, digestMs, controlMs: i.controlMs, rttMs: i.rttMs } };
}

export interface ConvergenceOptions {
  /** --max-downtime: the budget for the hand-off's work, ms (one round trip comes on top). */
  budgetMs: number;
  /** How long the estimate may go without shrinking before the throttle steps up. */
  windowMs?: number;
  maxLevel?: number;
}

export interface Verdict {
  fence: boolean;
  estimate: HandoffEstimate;
  /** 0: no throttle; n: the VM may write at rateCap(n, link) (throttle.ts enforces it). */
  level: number;
}

/** "Shrinking" means the window's best estimate is at least this much under the last window's. */
const SHRINK = 0.9;

export class ConvergenceController {
  private level = 0;
  private maxSeen = 0;
  private windowStart?: number;
  private windowBest = Number.POSITIVE_INFINITY;
  private lastBest = Number.POSITIVE_INFINITY;
  private readonly windowMs: number;
  private readonly maxLevel: number;

  constructor(private readonly opts: ConvergenceOptions) {
    this.windowMs = opts.windowMs ?? 2000;
    this.maxLevel = opts.maxLevel ?? 12;
  }

  /** The level now. */
  get currentLevel(): number {
    return this.level;
  }

  /** The highest level reached (the migration's throttle steps). */
  get steps(): number {
    return this.maxSeen;
  }

  observe(now: number, inputs: HandoffInputs): Verdict {
    const estimate = estimateHandoff(inputs);
    if (estimate.workMs <= this.opts.budgetMs) return { fence: true, estimate, level: this.level };
    this.windowStart ??= now;
    this.windowBest = Math.min(this.windowBest, estimate.workMs);
    if (now - this.windowStart >= this.windowMs) {
      if (this.windowBest > this.lastBest * SHRINK) this.level = Math.min(this.level + 1, this.maxLevel);
      this.maxSeen = Math.max(this.maxSeen, this.level);
      this.lastBest = this.windowBest;
      this.windowBest = Number.POSITIVE_INFINITY;
      this.windowStart = now;
    }
    return { fence: false, estimate, level: this.level };
  }

  /** Pressure from outside the estimate (the delta log nearing its bound): at least this level. */
  atLeast(level: number): void {
    this.level = Math.max(this.level, Math.min(level, this.maxLevel));
    this.maxSeen = Math.max(this.maxSeen, this.level);
  }
}

/**
 * The VM's write allowance at a level, bytes per second: level 1 is 90 % of the link's
 * measured rate (the queue shrinks by at least the rest), and each level halves it.
 * Undefined: no cap.
 */
export function rateCap(level: number, linkBytesPerMs: number | undefined, compressionRatio: number): number | undefined {
  if (level <= 0 || !linkBytesPerMs) return undefined;
  const rawPerSec = (linkBytesPerMs * 1000) / Math.max(compressionRatio, 0.01);
  return Math.max(4096, Math.floor((0.9 * rawPerSec) / 2 ** (level - 1)));
}
