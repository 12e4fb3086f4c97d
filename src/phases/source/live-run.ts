// What a live migration keeps across its attempts. A link that breaks before the fence is
// resumed on a new connection: the recording, the image's digests, the bulk's totals and the
// throttle's last verdict outlive the connection; the connection, its compressor and its
// delta stream do not.

import type { ControlClient } from "../../disk/service/control-client.ts";
import { type ServeStatus, servedImages } from "../../disk/service/status.ts";
import { RegionDigests } from "../../disk/image/region-digest.ts";
import { NoSourceHypervisor } from "../../hypervisor/none.ts";
import type { SourceHypervisor } from "../../hypervisor/types.ts";
import type { Channel } from "../../net/channel.ts";
import type { Compressor } from "../../net/compress.ts";
import type { Redirect } from "../../redirect/redirect.ts";
import { PROVISIONAL_CAP } from "../bulk-throttle.ts";
import type { ImageCheck } from "../catch-up.ts";
import { BulkReadLog } from "../coalesce.ts";
import type { DeltaStreamer } from "../deltas.ts";
import { DiskTally } from "../disk-tally.ts";
import { DeltasError, Interrupted } from "../errors.ts";
import type { RecordingWatch } from "../recording-watch.ts";
import type { LiveStage } from "./abort.ts";
import { addDeltaStats, type DeltaTotals, NO_DELTAS } from "./metrics.ts";
import { ResendLedger } from "./resend-ledger.ts";
import { ResumePolicy } from "./resume-policy.ts";
import { DEFAULT_MAX_DOWNTIME_MS, phaseEvent, type SourceOptions } from "./options.ts";

export interface Deadline {
  at: number;
  action: "abort" | "freeze";
  text: string;
}

/** The bulk copy's totals over every attempt, in sendBulk's terms. */
export interface BulkTotals {
  bytesSent: number;
  wireBytes: number;
  zeroBlocks: number;
  dataBlocks: number;
  baseBlocks: number;
  holeBytes: number;
}

/** What the bulk copies so far found out about the link and the VM's writes. */
export interface BulkPacing {
  /** The VM's write cap for the next bulk attempt until its first verdict: provisional, then what the last attempt found. */
  heldCap?: number;
  /** The catch-up's first link rate (bytes/ms), measured by the last bulk copy. */
  linkBytesPerMs?: number;
  /** The bulk throttle engaged at some point: the catch-up starts throttled. */
  throttled: boolean;
  /** How long the last bulk copy took: the catch-up's target for its own length. */
  ms: number;
}

export interface LiveRun {
  o: SourceOptions;
  ctl: ControlClient;
  status: ServeStatus;
  blockSize: number;
  t0: number;
  hv: SourceHypervisor;
  stage: LiveStage;
  budgetMs: number;
  deadline?: Deadline;
  /** --timeout-action freeze: when the source was fenced mid-bulk at the deadline. */
  frozenAt?: number;
  /** --timeout-action freeze reached mid-bulk with a VM: frozen at the bulk's end instead (said once). */
  freezeDeferred?: boolean;
  /** Coalesce mode: where the bulk copy read, to drop the deltas it carried. */
  carried?: BulkReadLog;
  check: ImageCheck;
  tally: DiskTally;
  bulk: BulkTotals;
  pacing: BulkPacing;
  /** Set once recording started (it outlives every attempt). */
  recording?: { logPath: string; watch: RecordingWatch; sampler: { stop(): void } };
  /** The attempt's connection and delta stream, while there is one. */
  ch?: Channel;
  deltas?: DeltaStreamer;
  redirect?: Redirect;
  /** Wire bytes of earlier connections, their deltas' totals, and every connection's compressor. */
  wire: number;
  /** Each connection's wire bytes, in order (the last is the one that finished). */
  attemptWire: number[];
  /** What resumes sent twice (resend-ledger.ts). */
  ledger: ResendLedger;
  /** When to try again after a broken link (resume-policy.ts). */
  resume: ResumePolicy;
  deltaStats: DeltaTotals;
  compressors: Compressor[];
}

export function newLiveRun(ctl: ControlClient, status: ServeStatus, blockSize: number, o: SourceOptions, t0: number): LiveRun {
  return {
    o,
    ctl,
    status,
    blockSize,
    t0,
    hv: o.hypervisor ?? new NoSourceHypervisor(),
    stage: { recording: false, fenced: false, barrierSent: false, vmGone: false, phase: "init" },
    budgetMs: o.maxDowntimeMs ?? DEFAULT_MAX_DOWNTIME_MS,
    deadline: o.timeout && { at: t0 + o.timeout.ms, action: o.timeout.action, text: o.timeout.text },
    carried: o.deltas === "paper" ? undefined : new BulkReadLog(),
    check: { image: servedImages(status), digests: new RegionDigests(status.size) },
    tally: new DiskTally(status.disks),
    bulk: { bytesSent: 0, wireBytes: 0, zeroBlocks: 0, dataBlocks: 0, baseBlocks: 0, holeBytes: 0 },
    pacing: { heldCap: PROVISIONAL_CAP, throttled: false, ms: 0 },
    wire: 0,
    attemptWire: [],
    ledger: new ResendLedger(),
    resume: new ResumePolicy(),
    deltaStats: NO_DELTAS,
    compressors: [],
  };
}

/** A new phase: its event, and the name a failure is reported under. */
export function enter(run: LiveRun, phase: string): void {
  run.stage.phase = phase;
  phaseEvent(run.o, phase);
}

/** Called at every step before the point of no return: Ctrl-C, and --timeout with abort. */
export function checkInterrupted(run: LiveRun): void {
  if (run.o.interrupted?.() && !run.stage.vmGone) throw new Interrupted();
  // Abort needs no converged state: it can cut the bulk copy short too. (freeze waits for the bulk.)
  if (run.deadline?.action === "abort" && performance.now() >= run.deadline.at && !run.stage.fenced)
    throw new DeltasError(`the migration did not finish within --timeout ${run.deadline.text}`);
}

/** The attempt's delta stream is done with: its totals kept, the stream closed. */
export function retireDeltas(run: LiveRun): void {
  if (run.deltas) run.deltaStats = addDeltaStats(run.deltaStats, run.deltas);
  run.deltas?.close();
  run.deltas = undefined;
}
