// The paper's metrics for one row of its evaluation (issue 17), from what the row recorded:
// the source's and the destination's events, and one client's operations. Pure, so that the
// definitions are tested on synthetic inputs (test/paper-figures.test.ts) and are the same for
// every workload, mode and link:
//   - downtime: the VM paused at the source (QEMU's pause, the source's `paused` event) until
//     it runs at the destination (dest's `running` event), both on the host's wall clock;
//   - disruption: report/disruption.ts over the client's operations, baseline = before the
//     migration was requested;
//   - additional disruption: disruption less downtime (never below 0);
//   - migration time: from the request (the source started) to the VM running at the
//     destination, the paper's definition (wanmig's own `migrationTimeMs` stops at the
//     storage hand-off, before the VM is let run);
//   - deltas and delta rate: as the source counted them (rate over its migration time).
import { measureDisruption } from "../../src/report/disruption.ts";
import type { OpLine } from "./paper-client.ts";

export interface RowEvents {
  /** Wall clock (ms) when the migration was requested. */
  requestedAt: number;
  /** The source's `paused` event's `at`, and dest's `running` event's `at` (wall clock, ms). */
  pausedAt?: number;
  runningAt?: number;
  /** The source's `done` event. */
  done: { deltaCount: number; deltaRatePerSec: number; throttleSteps: number; storageDowntimeMs: number; bytesOnWire: number; pauseDrain?: { bytes: number } };
}

export interface RowFigures {
  downtimeMs?: number;
  disruptionMs: number;
  additionalMs?: number;
  migrationS?: number;
  storageDowntimeMs: number;
  deltas: number;
  deltaRate: number;
  throttleSteps: number;
  wireMiB: number;
  /** What the VM's pause drained (writes in flight at the stop), MiB. */
  pauseDrainMiB?: number;
  ops: number;
  failedOps: number;
  slowOps: number;
  baselineLatencyMs: number;
}

export function rowFigures(ev: RowEvents, ops: readonly OpLine[]): RowFigures {
  const d = measureDisruption(ops, { baselineUntil: ev.requestedAt });
  const downtimeMs = ev.pausedAt !== undefined && ev.runningAt !== undefined ? ev.runningAt - ev.pausedAt : undefined;
  return {
    downtimeMs,
    disruptionMs: d.disruptionMs,
    additionalMs: downtimeMs === undefined ? undefined : Math.max(0, d.disruptionMs - downtimeMs),
    migrationS: ev.runningAt === undefined ? undefined : (ev.runningAt - ev.requestedAt) / 1000,
    storageDowntimeMs: ev.done.storageDowntimeMs,
    deltas: ev.done.deltaCount,
    deltaRate: ev.done.deltaRatePerSec,
    throttleSteps: ev.done.throttleSteps,
    wireMiB: ev.done.bytesOnWire / (1024 * 1024),
    pauseDrainMiB: ev.done.pauseDrain && ev.done.pauseDrain.bytes / (1024 * 1024),
    ops: ops.length,
    // The operation still waiting at the stop is in the disruption's clock, not a failure.
    failedOps: ops.filter((op) => !op.ok && !op.stopped).length,
    slowOps: d.slowOps,
    baselineLatencyMs: d.baselineLatencyMs,
  };
}

/** Acknowledged post ids that are not among those found on the destination's disk. */
export function lostPosts(ops: readonly OpLine[], onDisk: readonly number[]): number[] {
  const have = new Set(onDisk);
  return ops.filter((op) => op.acked && op.id !== undefined && !have.has(op.id)).map((op) => op.id!);
}

/** The ids in the guest's posts file ("POST N" lines); anything else in it is an error. */
export function parsePosts(text: string): number[] {
  return text
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => {
      const m = /^POST (\d+)$/.exec(l.trim());
      if (!m) throw new Error(`the posts file has a line that is not a post: ${JSON.stringify(l)}`);
      return Number(m[1]);
    });
}

/** The median of each numeric figure over runs (a field missing in a run is left out of its median). */
export function medianFigures(runs: readonly RowFigures[]): RowFigures {
  const keys = new Set(runs.flatMap((r) => Object.keys(r))) as Set<keyof RowFigures>;
  const out: Partial<Record<keyof RowFigures, number>> = {};
  for (const k of keys) {
    const xs = runs.map((r) => r[k]).filter((x): x is number => typeof x === "number").sort((a, b) => a - b);
    if (!xs.length) continue;
    const m = xs.length >> 1;
    out[k] = xs.length % 2 ? xs[m]! : (xs[m - 1]! + xs[m]!) / 2;
  }
  return out as RowFigures;
}
