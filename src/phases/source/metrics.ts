// The final figures of a migration, in the paper's terms: what `done` reports.

import type { Compressor } from "../../net/compress.ts";
import type { DeltaStreamer } from "../deltas.ts";
import type { DiskFigures, DiskTally } from "../disk-tally.ts";
import type { HandoffTimes } from "../handoff.ts";

export interface MigrationMetrics {
  migrationTimeMs: number;
  /**
   * The VM's downtime as the source sees it: paused at the source until the hypervisor
   * reported the move complete (storage only: the storage downtime). The destination logs
   * when its VM actually runs; the guest's own view is the truest (see the real-VM test).
   */
  downtimeMs: number;
  storageDowntimeMs: number;
  /** The storage downtime's parts (live mode). */
  storageDowntimeParts?: HandoffTimes["parts"];
  /** What the convergence controller expected the storage downtime to be when it fenced (live mode). */
  estimatedStorageDowntimeMs?: number;
  /** The budget it fenced against (--max-downtime; one round trip comes on top). */
  maxDowntimeMs?: number;
  /** --timeout-action freeze: why the fence came before the estimate fit. */
  frozen?: string;
  bulkBytes: number;
  bulkWireBytes: number;
  bulkZeroBlocks: number;
  /** Image bytes in holes, skipped without being read. */
  bulkHoleBytes: number;
  /** Blocks the destination's base image already held, so they were not sent. */
  bulkBaseBlocks: number;
  /** Image bytes (bulk and deltas) sent at each zstd level; "0": as they were. */
  compressLevels: Record<string, number>;
  /** Bulk bytes (of those) sent as pieces of one long-window zstd stream (slow links). */
  bulkStreamedBytes: number;
  deltaCount: number;
  deltaBytes: number;
  deltaWireBytes: number;
  /** Deltas not sent: the bulk copy carried them, or a later write covered them (coalesce). */
  deltasSkipped: number;
  /** Copy passes: how many, and the image bytes they sent (part of deltaBytes). */
  copyPasses: number;
  copiedBytes: number;
  /** Deltas logged as ranges (WRITTEN) and sent with the image's content, and the control calls made to settle one. */
  rangeDeltas: number;
  settleCalls: number;
  finalDeltas: number;
  bytesOnWire: number;
  /** Of bytesOnWire: what resumed connections sent again (what the destination had not got when a link broke; resend-ledger.ts). */
  bytesResent: number;
  /** bytesOnWire by connection, in order: one entry per attempt. */
  attemptWire: number[];
  /** TCP connections the last attempt ran over (--streams). */
  streams: number;
  deltaRatePerSec: number;
  throttleSteps: number;
  /** With a hypervisor: the writes its pause drained (held then, or arriving after), which crossed before B could run. */
  pauseDrain?: { writes: number; bytes: number };
  /** With a hypervisor that can: how long the VM's pause was held back until what it drains fit the budget (ms). */
  pauseHeldBackMs?: number;
  /** Broken links resumed during this migration. */
  reconnects: number;
  /** Each disk's deltas, and its share of the hand-off's (live mode). */
  disks?: DiskFigures[];
}

export interface DeltaTotals {
  sent: number;
  bytes: number;
  wireBytes: number;
  skipped: number;
  copyPasses: number;
  copiedBytes: number;
  ranges: number;
  settleCalls: number;
}
export const NO_DELTAS: DeltaTotals = { sent: 0, bytes: 0, wireBytes: 0, skipped: 0, copyPasses: 0, copiedBytes: 0, ranges: 0, settleCalls: 0 };

export function addDeltaStats(a: DeltaTotals, d: DeltaStreamer): DeltaTotals {
  return {
    sent: a.sent + d.sent,
    bytes: a.bytes + d.bytes,
    wireBytes: a.wireBytes + d.wireBytes,
    skipped: a.skipped + d.skipped,
    copyPasses: a.copyPasses + d.copyPasses,
    copiedBytes: a.copiedBytes + d.copiedBytes,
    ranges: a.ranges + d.rangesSent,
    settleCalls: a.settleCalls + d.settleCalls,
  };
}

function levelTotals(zs: Compressor[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const z of zs) for (const [level, bytes] of z.rawByLevel) out[level] = (out[level] ?? 0) + bytes;
  return out;
}

/** The final figures of a migration, in the paper's terms; also sent as the "done" event. */
export function finish(
  o: { onEvent?: (e: Record<string, unknown>) => void },
  m: {
    t0: number;
    fencedAt: number;
    doneAt: number;
    parts?: HandoffTimes["parts"];
    converged?: { estimateMs: number; budgetMs: number; frozen?: string };
    /** With a hypervisor: when the VM paused at the source, and when the hypervisor said it had moved. */
    pausedAt?: number;
    resumedAt?: number;
    bulk: { bytesSent: number; wireBytes: number; zeroBlocks: number; baseBlocks: number; holeBytes: number };
    /** The compressors of every connection. */
    compressors?: Compressor[];
    deltas: DeltaTotals;
    finalDeltas: number;
    bytesOnWire: number;
    bytesResent?: number;
    attemptWire?: number[];
    streams?: number;
    throttleSteps: number;
    pauseDrain?: { writes: number; bytes: number };
    pauseHeldBackMs?: number;
    reconnects: number;
    disks?: DiskTally;
  },
): MigrationMetrics {
  const migrationTimeMs = m.doneAt - m.t0;
  const metrics: MigrationMetrics = {
    migrationTimeMs: Math.round(migrationTimeMs),
    downtimeMs: Math.round(m.pausedAt !== undefined && m.resumedAt !== undefined ? m.resumedAt - m.pausedAt : m.doneAt - m.fencedAt),
    storageDowntimeMs: Math.round(m.doneAt - m.fencedAt),
    storageDowntimeParts: m.parts,
    estimatedStorageDowntimeMs: m.converged && Math.round(m.converged.estimateMs),
    maxDowntimeMs: m.converged?.budgetMs,
    frozen: m.converged?.frozen,
    bulkBytes: m.bulk.bytesSent,
    bulkWireBytes: m.bulk.wireBytes,
    bulkZeroBlocks: m.bulk.zeroBlocks,
    bulkHoleBytes: m.bulk.holeBytes,
    bulkBaseBlocks: m.bulk.baseBlocks,
    compressLevels: levelTotals(m.compressors ?? []),
    bulkStreamedBytes: (m.compressors ?? []).reduce((a, z) => a + z.streamedRaw, 0),
    deltaCount: m.deltas.sent,
    deltaBytes: m.deltas.bytes,
    deltaWireBytes: m.deltas.wireBytes,
    deltasSkipped: m.deltas.skipped,
    copyPasses: m.deltas.copyPasses,
    copiedBytes: m.deltas.copiedBytes,
    rangeDeltas: m.deltas.ranges,
    settleCalls: m.deltas.settleCalls,
    finalDeltas: m.finalDeltas,
    bytesOnWire: m.bytesOnWire,
    bytesResent: m.bytesResent ?? 0,
    attemptWire: m.attemptWire ?? [m.bytesOnWire],
    streams: m.streams ?? 1,
    deltaRatePerSec: Math.round((m.deltas.sent / migrationTimeMs) * 1000),
    throttleSteps: m.throttleSteps,
    pauseDrain: m.pauseDrain,
    pauseHeldBackMs: m.pauseHeldBackMs,
    reconnects: m.reconnects,
    disks: m.disks?.figures(),
  };
  o.onEvent?.({ event: "done", ...metrics });
  return metrics;
}

