// Phase 3's end: ship deltas until the hand-off fits the downtime budget, then keep
// shipping while the hypervisor moves memory. One round sends what the log holds (up to a
// window of unacknowledged bytes), takes the destination's ACKs, rehashes what the deltas
// touched (so the hand-off has little to hash), tells the serve how far we got and what
// write rate the VM may have, and asks the convergence controller whether to fence.

import type { ControlClient } from "../disk/service/control-client.ts";
import type { RegionDigests } from "../disk/image/region-digest.ts";
import type { ImageRef } from "../disk/image/image-set.ts";
import type { DeltaStreamer } from "./deltas.ts";
import { DeltasError } from "./errors.ts";
import { type HoldLook, SwitchoverHold } from "./switchover-hold.ts";
import { type RecordingWatch, reportShipped, reportStopped } from "./recording-watch.ts";
import { ConvergenceController, estimateHandoff, type HandoffEstimate, type HandoffInputs, rateCap, type Verdict } from "./convergence.ts";
import { LinkMeter } from "./link-meter.ts";

const DRAIN_ACKS_MAX_MS = 2000;
const PROGRESS_EVERY_MS = 250;
const SHIP_REPORT_EVERY_MS = 50;
/** The keeper reports when no round has for this long: well inside the serve's 2 s lease. */
const LEASE_KEEP_MS = 500;
/**
 * Unacknowledged bytes a round may leave in flight: enough to keep the link busy between
 * ACKs (the destination sends one every 200 ms, sooner when idle) and across the round
 * trip, and little more, so that on a slow link a round ends in time for the controller.
 */
const MIN_WINDOW_BYTES = 1024 * 1024;
const WINDOW_SPAN_MS = 400;
/** The delta log's share of its bound past which the throttle is pushed up, a level per 5 %. */
const LOG_PRESSURE_FROM = 0.5;

export interface ConvergenceSettings {
  /** --max-downtime, ms: the hand-off's work (one round trip comes on top). */
  budgetMs: number;
  /** Measured at the handshake. */
  rttMs: number;
  /** The bulk copy's wire rate (bytes per ms), the link's first measure. */
  linkBytesPerMs?: number;
  /** --timeout: when (performance.now()) and what then. */
  deadline?: { at: number; action: "abort" | "freeze"; text: string };
  /** The throttle level to start at (the bulk copy's throttle engaged: carry it on). */
  initialLevel?: number;
  /** How long the catch-up should take (ms): the bulk copy's duration, so a writer costs about one more of it. */
  targetMs?: number;
  /** How long the VM's pause may be held back in all, ms (switchover-hold.ts; its default otherwise). */
  maxPauseHoldMs?: number;
}

/** How catch-up ended: the estimate at the fence, and why the fence came early if it did. */
export interface Converged {
  estimate: HandoffEstimate;
  /** --timeout-action freeze: fenced at the deadline, not because the estimate fit. */
  frozen?: string;
}

/** The source image and its region digests, kept current as deltas are read. */
export interface ImageCheck {
  image: ImageRef;
  digests: RegionDigests;
}

/** What the deltas phase reports while it runs (the progress line, --json). */
export interface DeltasProgress {
  queuedBytes: number;
  /** Bytes of the VM's writes the serve holds back (the cap), not yet in the queue. */
  heldBytes: number;
  unackedBytes: number;
  deltasSent: number;
  /** Delta bytes sent so far (before compression). */
  deltaBytes: number;
  deltasSkipped: number;
  /** Copy passes so far, and the image bytes of the current one still to send. */
  copyPasses: number;
  copyLeftBytes: number;
  throttleLevel: number;
  /** What the hand-off would cost now (ms), against the budget. */
  estimateMs: number;
  budgetMs: number;
  /** The VM's write allowance now, bytes/s (undefined: none). */
  rateCap?: number;
  /** While memory moves: the VM's pause is held back, its writes in flight not fitting the budget (switchover-hold.ts). */
  pauseHeld?: boolean;
  /** The hand-off's estimate with those writes counted (ms): what the pause would cost now. */
  pauseEstimateMs?: number;
}

export class CatchUp {
  private lastReport = 0;
  private reporting?: Promise<void>;
  /** What a keeper's report threw: raised by the next round of untilConverged. */
  private keeperFailure?: unknown;
  private throttleLevel = 0;
  private lastProgress = 0;
  private rounds = 0;
  private readonly controller: ConvergenceController;
  private readonly link: LinkMeter;
  private controlMs = 1;
  private cap?: number;
  private log: { bytes: number; maxBytes?: number } = { bytes: 0 };
  /** Writes the serve holds back (the cap): not yet in the log; shown beside the queue. */
  private held = { writes: 0, bytes: 0 };
  private verdict?: Verdict;
  /** The serve being told the VM stopped at the source (vmStopped()). */
  private stopNotice?: Promise<void>;
  private readonly hold: SwitchoverHold;
  private pauseLook?: HoldLook;

  constructor(
    private readonly ctl: ControlClient,
    private readonly deltas: DeltaStreamer,
    private readonly check: ImageCheck,
    private readonly size: number,
    private readonly watch: RecordingWatch,
    private readonly settings: ConvergenceSettings,
    private readonly onProgress?: (p: DeltasProgress) => void,
  ) {
    this.controller = new ConvergenceController({ budgetMs: settings.budgetMs, targetMs: settings.targetMs });
    if (settings.initialLevel) this.controller.atLeast(settings.initialLevel);
    this.link = new LinkMeter(settings.linkBytesPerMs);
    this.hold = new SwitchoverHold({ budgetMs: settings.budgetMs, maxHoldMs: settings.maxPauseHoldMs });
  }

  /**
   * While memory moves: may the hypervisor pause the VM now? What the pause drains (the
   * writes the serve holds, on top of the queue) must fit the budget (switchover-hold.ts).
   */
  mayPause(): HoldLook {
    this.pauseLook = this.hold.look(performance.now(), this.inputs(), this.held.bytes);
    return this.pauseLook;
  }

  /** The link's rate as the deltas measured it (bytes/s), if they have. */
  linkBytesPerSec(): number | undefined {
    const r = this.link.bytesPerMs();
    return r === undefined ? undefined : r * 1000;
  }

  /** How long the VM's pause was held back (ms). */
  get pauseHeldMs(): number {
    return Math.round(this.hold.heldMs);
  }

  /** The highest throttle level this migration reached (its throttle steps). */
  get throttleSteps(): number {
    return Math.max(this.controller.steps, this.throttleLevel);
  }

  private window(): number {
    const rate = this.link.bytesPerMs();
    return Math.max(MIN_WINDOW_BYTES, rate ? rate * (2 * this.settings.rttMs + WINDOW_SPAN_MS) : 0);
  }

  /** One report at a time: the keeper's and a round's would otherwise race on the serve's seq. */
  private report(): Promise<void> {
    this.reporting ??= (async () => {
      const d = this.deltas;
      this.cap = this.stopNotice ? undefined : rateCap(this.controller.currentLevel, this.link.bytesPerMs(), d.compressionRatio());
      const asked = performance.now();
      const answer = await reportShipped(this.ctl, this.watch, d.lastRead, this.cap);
      this.controlMs = 0.7 * this.controlMs + 0.3 * (performance.now() - asked);
      this.throttleLevel = answer.level;
      if (answer.log) this.log = answer.log;
      if (answer.held) this.held = answer.held;
      this.lastReport = Date.now();
    })().finally(() => (this.reporting = undefined));
    return this.reporting;
  }

  /**
   * Renews the cap's lease while a round is stuck in a send: on the WAN the bulk copy's
   * tail (a channel's 8 MiB) takes 13 s to drain, the 2 s lease lapsed, and a random-4K
   * writer wrote 700 MB unchecked. Runs only inside untilConverged: a report takes the
   * serve's dirty map, and the hand-off must be the only one taking it after the fence.
   */
  private keepLease(): () => Promise<void> {
    const timer = setInterval(() => {
      if (Date.now() - this.lastReport >= LEASE_KEEP_MS) this.report().catch((err) => (this.keeperFailure ??= err));
    }, LEASE_KEEP_MS / 2);
    return async () => {
      clearInterval(timer);
      await this.reporting?.catch(() => undefined);
    };
  }

  private bulkAcked(): boolean {
    return this.deltas.ackedBulk >= this.size;
  }

  /** What the hand-off would cost were the source fenced now, as measured so far. */
  private inputs(): HandoffInputs {
    const d = this.deltas;
    // Writes the serve holds (this.held) are not counted: storage only, the fence refuses
    // them (the client writes them again at the destination). Where a hypervisor's pause
    // drains them they do cross, but they do not shrink under the throttle (a client keeps
    // its queue full): counted, a capped sequential writer held 4 MiB on a 2 MB/s link and
    // the estimate never fit. They count once what may be in flight is bounded.
    const queued = d.pendingBytes();
    return {
      queuedBytes: queued,
      unackedWireBytes: d.unackedBytes(),
      compressionRatio: d.compressionRatio(),
      linkBytesPerMs: this.link.bytesPerMs(),
      rttMs: this.settings.rttMs,
      // Every queued byte is rehashed once it is read, on top of what is dirty already.
      hashBytes: queued + this.check.digests.pendingBytes(),
      hashBytesPerMs: this.check.digests.hashRate(),
      controlMs: 2 * this.controlMs, // the fence, then the dirty map
      destSyncMs: d.destSyncMs,
    };
  }

  /** The controller's look at the hand-off, were the source fenced now. */
  private assess(): Verdict {
    const inputs = this.inputs();
    // Until the destination has the whole bulk copy, its tail shares the link (up to a
    // channel's worth of it queued): no fence, and no verdict on a pace the deltas do not set.
    const v = this.bulkAcked() ? this.controller.observe(performance.now(), inputs) : { fence: false, estimate: estimateHandoff(inputs), level: this.controller.currentLevel };
    this.verdict = v;
    return v;
  }

  /**
   * The hypervisor stopped the VM (its memory converged): what it still writes is what was
   * in flight, bounded, and flushed before the hand-off can start. The serve is told at once
   * to hold none of it, and no report asks for a cap again: those writes reach the log at
   * disk speed and ship at the link's, instead of trickling in at the cap's rate while the
   * VM stays stopped. A report already under way may still name a cap; the serve ignores
   * caps once told. Called from the hypervisor's event handler, so the request starts there;
   * rounds and stopNoticed() wait for it and raise what it threw.
   */
  vmStopped(): void {
    this.stopNotice ??= reportStopped(this.ctl, this.watch);
    this.stopNotice.catch(() => undefined); // raised by the next round or stopNoticed()
  }

  /** Before the hand-off: the serve has taken the stop, if there was one (QEMU's STOP comes before its pre-switchover). */
  async stopNoticed(): Promise<void> {
    await this.stopNotice;
  }

  /** One round: send, take ACKs, rehash, report. Also what runs while memory moves. */
  async round(): Promise<void> {
    const d = this.deltas;
    await this.stopNotice;
    await d.pump({ window: this.window() });
    d.takeAcks();
    // Only unsent bytes mean the link was kept busy: bytes merely in flight behind a trickle
    // of writes would measure the writer (on the WAN under dynamic-web the rate sank to the
    // writer's, the estimate grew without end, and the migration never fenced).
    if (this.bulkAcked()) this.link.observe(performance.now(), d.ackedWireBytes, d.pendingBytes() > 0, d.drainTotals());
    // A request to the serve per round (every few ms while memory moves) would be most of
    // the round's cost; the throttle needs the queue's size, not each step of it. The same
    // answer brings the serve's dirty map, marked before the rehash below.
    if (Date.now() - this.lastReport >= SHIP_REPORT_EVERY_MS) await this.report();
    // Rehash what the deltas so far touched now, while the VM runs, not in the downtime
    // (the first round also hashes regions no bulk chunk covered whole: a resumed copy).
    this.check.digests.refresh(this.check.image, { all: this.rounds++ === 0 });
    if (this.onProgress && Date.now() - this.lastProgress >= PROGRESS_EVERY_MS) {
      this.lastProgress = Date.now();
      this.onProgress({
        queuedBytes: d.pendingBytes(),
        heldBytes: this.held.bytes,
        unackedBytes: d.unackedBytes(),
        deltasSent: d.sent,
        deltaBytes: d.bytes,
        deltasSkipped: d.skipped,
        copyPasses: d.copyPasses,
        copyLeftBytes: d.copyLeftBytes(),
        throttleLevel: Math.max(this.throttleLevel, this.verdict?.level ?? 0),
        // Before the first verdict too: a progress line reading 0 ms with MBs queued told the operator nothing.
        estimateMs: Math.round((this.verdict?.estimate ?? estimateHandoff(this.inputs())).totalMs),
        budgetMs: this.settings.budgetMs,
        rateCap: this.cap,
        ...(this.pauseLook && { pauseHeld: this.pauseLook.hold, pauseEstimateMs: Math.round(this.pauseLook.estimate.totalMs) }),
      });
    }
  }

  /**
   * Rounds until the bulk copy is acknowledged and the hand-off's estimate fits the budget;
   * then waits (bounded) for the last ACKs, sending nothing new, so the fence finds the
   * destination idle. The throttle steps up while the estimate does not shrink, and harder
   * as the delta log nears its bound; the serve ends recording if it reaches it (the VM's
   * writes go on) and we abort. At the --timeout deadline: abort, or fence as things are.
   */
  async untilConverged(check?: () => void): Promise<Converged> {
    // The bulk throttle's cap stands until this first report replaces it.
    await this.report();
    const stopKeeper = this.keepLease();
    try {
      return await this.converge(check);
    } finally {
      await stopKeeper();
    }
  }

  private async converge(check?: () => void): Promise<Converged> {
    for (let n = 0; ; n++) {
      check?.();
      if (this.keeperFailure) throw this.keeperFailure;
      await this.round();
      const d = this.deltas;
      const v = this.assess();
      if (v.fence) {
        await this.drainAcks();
        return { estimate: v.estimate };
      }
      if (this.log.maxBytes) {
        const share = this.log.bytes / this.log.maxBytes;
        if (share > LOG_PRESSURE_FROM) this.controller.atLeast(Math.ceil((share - LOG_PRESSURE_FROM) / 0.05));
      }
      if (n % 20 === 0) {
        const st = await this.ctl.status();
        if (st.recording.failed) throw new DeltasError(`record mode failed at the source: ${st.recording.failed}`);
      }
      const deadline = this.settings.deadline;
      if (deadline && performance.now() >= deadline.at) {
        const left = `${Math.round(v.estimate.totalMs)} ms of hand-off estimated against a budget of ${this.settings.budgetMs} ms`;
        if (deadline.action === "abort") throw new DeltasError(`the migration did not converge within --timeout ${deadline.text} (${left})`);
        if (this.bulkAcked()) {
          await this.drainAcks();
          return { estimate: v.estimate, frozen: `--timeout ${deadline.text} reached: fenced with ${left}` };
        }
      }
      await Bun.sleep(10);
    }
  }

  private async drainAcks(): Promise<void> {
    const end = Date.now() + DRAIN_ACKS_MAX_MS;
    while (this.deltas.unackedBytes() > 0 && Date.now() < end) {
      await Bun.sleep(2);
      this.deltas.takeAcks();
    }
  }
}
