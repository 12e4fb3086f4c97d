// Phase 3's end: ship deltas until little is left anywhere, then keep shipping while the
// hypervisor moves memory. One round sends what the log holds, takes the destination's
// ACKs, rehashes what the deltas touched (so the hand-off has little to hash) and tells
// the serve how far we got (its throttle watches that queue).

import type { ControlClient } from "../disk/control-client.ts";
import type { RegionDigests } from "../disk/region-digest.ts";
import type { DeltaStreamer } from "./deltas.ts";
import { DeltasError } from "./errors.ts";
import { ControlError, ExitCode } from "../errors.ts";
import type { RecordingWatch } from "./recording-watch.ts";

/** Switch over once less than this much is unsent or unapplied: it bounds the storage part of downtime. */
const SWITCHOVER_PENDING_BYTES = 1024 * 1024;
const DRAIN_ACKS_MAX_MS = 2000;
const CATCH_UP_TIMEOUT_MS = 10 * 60 * 1000;
const PROGRESS_EVERY_MS = 250;
const SHIP_REPORT_EVERY_MS = 50;

/** The source image and its region digests, kept current as deltas are read. */
export interface ImageCheck {
  image: string;
  digests: RegionDigests;
}

/** What the deltas phase reports while it runs (the progress line, --json). */
export interface DeltasProgress {
  queuedBytes: number;
  unackedBytes: number;
  deltasSent: number;
  /** Delta bytes sent so far (before compression). */
  deltaBytes: number;
  deltasSkipped: number;
  throttleLevel: number;
}

export class CatchUp {
  private reported = -1n;
  private lastReport = 0;
  private throttleLevel = 0;
  private lastProgress = 0;
  private rounds = 0;

  constructor(
    private readonly ctl: ControlClient,
    private readonly deltas: DeltaStreamer,
    private readonly check: ImageCheck,
    private readonly size: number,
    private readonly watch: RecordingWatch,
    private readonly onProgress?: (p: DeltasProgress) => void,
  ) {}

  /** One round: send, take ACKs, rehash, report. Also what runs while memory moves. */
  async round(): Promise<void> {
    const d = this.deltas;
    await d.pump();
    d.takeAcks();
    // A request to the serve per round (every few ms while memory moves) would be most of
    // the round's cost; the throttle needs the queue's size, not each step of it. The same
    // answer brings the serve's dirty map, marked before the rehash below.
    if (Date.now() - this.lastReport >= SHIP_REPORT_EVERY_MS) {
      const answer = await this.ctl.shipped(d.lastRead, this.watch.recording).catch((err: Error) => {
        // The serve answered that it holds another recording (or none): a restart that could
        // not go on with ours. Writes since may be in no log: abort, the VM stays here.
        if (err instanceof ControlError && err.exitCode === ExitCode.badInput) throw new DeltasError(`the serve lost the recording: ${err.message}`);
        throw err;
      });
      this.watch.apply(answer);
      this.throttleLevel = answer.level;
      this.reported = d.lastRead;
      this.lastReport = Date.now();
    }
    // Rehash what the deltas so far touched now, while the VM runs, not in the downtime
    // (the first round also hashes regions no bulk chunk covered whole: a resumed copy).
    this.check.digests.refresh(this.check.image, { all: this.rounds++ === 0 });
    if (this.onProgress && Date.now() - this.lastProgress >= PROGRESS_EVERY_MS) {
      this.lastProgress = Date.now();
      this.onProgress({ queuedBytes: d.pendingBytes(), unackedBytes: d.unackedBytes(), deltasSent: d.sent, deltaBytes: d.bytes, deltasSkipped: d.skipped, throttleLevel: this.throttleLevel });
    }
  }

  /**
   * Rounds until less than 1 MiB is unsent here or unapplied there, and the bulk copy is
   * acknowledged; then waits (bounded) for the last ACKs, sending nothing new, so the fence
   * finds the destination idle.
   */
  async untilSmall(check?: () => void): Promise<void> {
    const start = Date.now();
    for (let n = 0; ; n++) {
      check?.();
      await this.round();
      const d = this.deltas;
      if (d.ackedBulk >= this.size && d.pendingBytes() + d.unackedBytes() < SWITCHOVER_PENDING_BYTES) return this.drainAcks();
      if (n % 20 === 0) {
        const st = await this.ctl.status();
        if (st.recording.failed) throw new DeltasError(`record mode failed at the source: ${st.recording.failed}`);
      }
      if (Date.now() - start > CATCH_UP_TIMEOUT_MS)
        throw new DeltasError("the VM writes faster than the link carries deltas", {
          cause: new Error(`${d.pendingBytes() + d.unackedBytes()} bytes still queued after ${CATCH_UP_TIMEOUT_MS / 60000} min`),
        });
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
