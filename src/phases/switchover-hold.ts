// Whether the VM may pause now (issue 33). A hypervisor's pause drains every write the VM
// has in flight: the ones the rate cap holds at the serve, and the ones queued behind them
// in the hypervisor. All of them become deltas that cross the link before the destination
// can run the VM. The convergence controller does not count held writes (a client keeps
// its queue full, so they never shrink under the cap and a capped writer would never
// fence); this policy does, at the one moment they matter: while memory moves, the
// hypervisor is kept from pausing the VM while what it would drain does not fit the budget.
//
// A writer's in-flight bytes rise and fall with what it does (Bonnie's read phases hold
// nothing), so holding waits for a moment that fits. A writer that never leaves one is not
// waited for without end: the hold trades at most the downtime at stake (the largest
// estimate seen, at least MIN_HOLD_MS) for migration time; past that the pause goes at the
// first moment no worse than the best one seen (never past maxHoldMs in all), and the hold
// is given up for the rest of the migration; the pause drains what it drains (the done
// event's pauseDrain says how much). On the paper's WAN a capped Bonnie
// writer kept 32 MB held for the whole 120 s it was waited for: its writes were stuck
// behind a 4 KB/s cap, so it never reached a read phase.

import { estimateHandoff, type HandoffEstimate, type HandoffInputs } from "./convergence.ts";

/** How long a pause is held back at most, by default: a few of Bonnie's phases. */
export const SWITCHOVER_HOLD_MAX_MS = 120_000;
/** A hold may always last this long, however little is at stake. */
export const MIN_HOLD_MS = 5_000;
/**
 * Once held, the pause is let go only after the writes in flight have fitted for this long:
 * a writer between two requests fits for an instant and refills its queue before QEMU
 * pauses (it looks every 100 ms). Let go on the first look that fitted, a Bonnie guest over
 * 24 Mbit/s drained 4.2 MB at the pause after 0.1 s of holding.
 */
export const QUIET_MS = 300;
/** Past the limit, a moment this much worse than the best seen still lets the pause go. */
const BEST_SLACK = 0.25;

export interface HoldLook {
  /** true: keep the hypervisor from pausing the VM now. */
  hold: boolean;
  /** The hand-off's estimate with the held writes counted. */
  estimate: HandoffEstimate;
  /** Set once, on the look that gave up holding. */
  gaveUp?: string;
}

export class SwitchoverHold {
  /** The pause is held back now. */
  private holding = false;
  private given = false;
  /** Total time the pause was held back (ms). */
  heldMs = 0;
  private lastLook?: number;
  /** The largest hand-off estimate seen while holding (ms): the downtime at stake. */
  private atStakeMs = 0;
  /** While held: since when the writes in flight have fitted (QUIET_MS). */
  private fitSince?: number;
  /** The least hand-off work seen while holding (ms): the best moment the writer offered. */
  private bestMs = Number.POSITIVE_INFINITY;

  constructor(private readonly opts: { budgetMs: number; maxHoldMs?: number }) {}

  /** `inputs`: the hand-off as the catch-up measures it; `heldBytes`: what the serve holds now. */
  look(now: number, inputs: HandoffInputs, heldBytes: number): HoldLook {
    const estimate = estimateHandoff({ ...inputs, queuedBytes: inputs.queuedBytes + heldBytes, hashBytes: inputs.hashBytes + heldBytes });
    if (this.holding && this.lastLook !== undefined) this.heldMs += now - this.lastLook;
    this.lastLook = now;
    const fits = estimate.workMs <= this.opts.budgetMs;
    if (this.given || (fits && !this.holding)) return { hold: false, estimate };
    this.holding = true;
    if (fits) {
      this.fitSince ??= now;
      return now - this.fitSince < QUIET_MS ? { hold: true, estimate } : this.letGo(estimate);
    }
    this.fitSince = undefined;
    this.atStakeMs = Math.max(this.atStakeMs, estimate.totalMs);
    this.bestMs = Math.min(this.bestMs, estimate.workMs);
    const hardMs = this.opts.maxHoldMs ?? SWITCHOVER_HOLD_MAX_MS;
    if (this.heldMs < Math.min(hardMs, Math.max(MIN_HOLD_MS, this.atStakeMs))) return { hold: true, estimate };
    // Past the downtime at stake: the pause goes at a moment no worse than the best one the
    // writer offered while held. Let go on the look that reached the limit, it went when
    // the queue was full by construction (that is why the hold was still on): on the LAN
    // diabolical row the pauses that followed drained 6.7-52 MB, where unheld ones drained 0-8 KiB.
    if (estimate.workMs > this.bestMs * (1 + BEST_SLACK) && this.heldMs < hardMs) return { hold: true, estimate };
    this.given = true;
    this.letGo(estimate);
    return {
      hold: false,
      estimate,
      gaveUp: `the VM's writes in flight did not fit the downtime budget for ${Math.round(this.heldMs / 1000)} s of holding its pause back (${Math.round(estimate.workMs)} ms of hand-off estimated with ${heldBytes} held bytes against ${this.opts.budgetMs} ms; the least seen ${Math.round(this.bestMs)} ms): letting it pause`,
    };
  }

  private letGo(estimate: HandoffEstimate): HoldLook {
    this.holding = false;
    this.lastLook = undefined;
    this.fitSince = undefined;
    return { hold: false, estimate };
  }
}
