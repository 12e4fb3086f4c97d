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
// Fence once the estimate fits. While it does not, the throttle steps up whenever the
// estimate is not shrinking fast enough to fit the budget by the target time (at the
// pace of the last window): each level halves the write rate the VM is allowed, from just
// under the link's rate. The target is the bulk copy's own duration (2 s at least), so a
// migration under a writer takes about twice the time of one without: the paper's
// diabolical writer must not stretch it to days, nor a LAN's to minutes. Levels never come down within a
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
  /** The destination's last background sync, ms (ACK's syncMs); 0 before one is known. */
  destSyncMs?: number;
}

export interface HandoffEstimate {
  totalMs: number;
  /** What the budget is compared with: all but the round trip. */
  workMs: number;
  parts: { transferMs: number; digestMs: number; controlMs: number; destinationMs: number; rttMs: number };
}

/** Until measured: a pessimistic 1 MB/s link and 200 MB/s of hashing. */
const ASSUMED_LINK_BYTES_PER_MS = 1000;
const ASSUMED_HASH_BYTES_PER_MS = 200_000;

/**
 * After the source's digest, the destination syncs its image (about what its last
 * background sync took), rehashes what the last deltas touched (as the source did), and
 * syncs its state file before DONE (one more sync's latency). Left out, this was 5-35 ms of
 * a 50 ms budget on loopback: fenced early, a random-4K writer's hand-off took 115-143 ms.
 */
function destinationMs(i: HandoffInputs, digestMs: number): number {
  return 2 * (i.destSyncMs ?? 0) + digestMs;
}

export function estimateHandoff(i: HandoffInputs): HandoffEstimate {
  const wire = i.queuedBytes * i.compressionRatio + i.unackedWireBytes;
  const transferMs = wire / (i.linkBytesPerMs ?? ASSUMED_LINK_BYTES_PER_MS);
  const digestMs = i.hashBytes / (i.hashBytesPerMs ?? ASSUMED_HASH_BYTES_PER_MS);
  const destMs = destinationMs(i, digestMs);
  const workMs = transferMs + digestMs + i.controlMs + destMs;
  return { totalMs: workMs + i.rttMs, workMs, parts: { transferMs, digestMs, controlMs: i.controlMs, destinationMs: destMs, rttMs: i.rttMs } };
}

export interface ConvergenceOptions {
  /** --max-downtime: the budget for the hand-off's work, ms (one round trip comes on top). */
  budgetMs: number;
  /** How often the pace is judged (ms). */
  windowMs?: number;
  /** How long the catch-up should take from its start (ms): the pace it is held to. */
  targetMs?: number;
  maxLevel?: number;
}

export interface Verdict {
  fence: boolean;
  estimate: HandoffEstimate;
  /** 0: no throttle; n: the VM may write at rateCap(n, link) (throttle.ts enforces it). */
  level: number;
}

/** The measured rates of a look, to cost another look's amounts with. */
function rates(i: HandoffInputs): Pick<HandoffInputs, "linkBytesPerMs" | "hashBytesPerMs" | "compressionRatio" | "controlMs"> {
  return { linkBytesPerMs: i.linkBytesPerMs, hashBytesPerMs: i.hashBytesPerMs, compressionRatio: i.compressionRatio, controlMs: i.controlMs };
}

/** What of the budget the throttle's part may still take when the fixed costs alone exceed it. */
const FLOOR_SLACK = 0.2;

/**
 * The fence and dirty-map calls and the destination's syncs cost what they cost, whatever
 * the VM writes: when they alone exceed the budget, no throttle can bring the estimate
 * under it, and waiting for that hung a migration at the top level with nothing queued
 * (loopback, a random-4K writer, a serve restarted: 80-320 ms estimated against the
 * default 50 ms). Then the hand-off goes
 * as soon as what the throttle can shrink (bytes to cross, pieces to rehash) is small;
 * the downtime is the floor, and the summary shows the estimate against the budget.
 */
export function atFloor(i: HandoffInputs, e: HandoffEstimate, budgetMs: number): boolean {
  const fixedMs = i.controlMs + 2 * (i.destSyncMs ?? 0);
  return fixedMs > budgetMs && e.workMs - fixedMs <= FLOOR_SLACK * budgetMs;
}

/** The least time a catch-up is given, whatever the bulk copy took. */
export const MIN_TARGET_MS = 2000;

export class ConvergenceController {
  private level = 0;
  /** When the throttle first held the VM (level 1 or more): the trial at the floor runs from there. */
  private heldSince?: number;
  private maxSeen = 0;
  private windowStart?: number;
  /** The window's best (least work) inputs, and the last window's: compared at the rates measured now. */
  private windowBest?: HandoffInputs;
  private lastBest?: HandoffInputs;
  private startedAt?: number;
  private readonly windowMs: number;
  private readonly targetMs: number;
  private readonly maxLevel: number;

  constructor(private readonly opts: ConvergenceOptions) {
    this.windowMs = opts.windowMs ?? 1000;
    this.targetMs = Math.max(MIN_TARGET_MS, opts.targetMs ?? MIN_TARGET_MS);
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
    if (atFloor(inputs, estimate, this.opts.budgetMs) && this.throttleTried(now)) return { fence: true, estimate, level: this.level };
    this.startedAt ??= now;
    this.windowStart ??= now;
    if (!this.windowBest || estimate.workMs < estimateHandoff(this.windowBest).workMs) this.windowBest = inputs;
    if (now - this.windowStart >= this.windowMs) {
      if (this.lastBest) {
        // At this window's pace, when would the estimate fit? Past the target (or never): up a
        // level. Both ends are costed at the rates measured now: a link rate that sank (or
        // rose) would otherwise read as the backlog growing (or shrinking). On the WAN the
        // bulk's tail still crossing made the first samples low, and the level climbed to
        // the floor in seconds.
        const then = estimateHandoff({ ...this.lastBest, ...rates(inputs) }).workMs;
        const best = estimateHandoff({ ...this.windowBest, ...rates(inputs) }).workMs;
        const pace = (then - best) / (now - this.windowStart);
        const left = Math.max(this.windowMs, this.startedAt + this.targetMs - now);
        if (pace <= 0 || (best - this.opts.budgetMs) / pace > left) this.raise(Math.min(this.level + 1, this.maxLevel), now);
      }
      this.maxSeen = Math.max(this.maxSeen, this.level);
      this.lastBest = this.windowBest;
      this.windowBest = undefined;
      this.windowStart = now;
    }
    return { fence: false, estimate, level: this.level };
  }

  /**
   * Whether a fence over the budget at the floor (atFloor) may go: only once the throttle has
   * held the VM for a whole window. The fixed costs are measured while the VM writes (the
   * destination's syncs under a writer that flushes), and what the estimate cannot see of a
   * queue of small records costs time too: a queue-depth-1 writer flushing every 64 writes
   * was fenced at level 0 with 299 ms estimated and 12,382 records queued, 334 ms of
   * downtime. At the floor the throttle starts at once, and climbs while nothing fits.
   */
  private throttleTried(now: number): boolean {
    if (this.level === 0) this.raise(1, now);
    this.heldSince ??= now; // raised from outside (atLeast): the trial runs from its first look
    // From the first hold, not the last step up: the pace steps the level up every window
    // while nothing fits, and a trial restarted at each step might never end.
    return now - this.heldSince >= this.windowMs;
  }

  private raise(level: number, now: number): void {
    if (level <= this.level) return;
    this.level = level;
    this.heldSince ??= now;
    this.maxSeen = Math.max(this.maxSeen, level);
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
