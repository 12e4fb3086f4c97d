// Copy passes: when the delta log holds far more bytes than the ranges it touches (a writer
// rewriting the same blocks faster than the link drains the log), send the image's current
// content over those ranges once, instead of every record that wrote them. QEMU's mirror
// does the same with its dirty bitmap; the paper's log replays every write.
//
// Why the destination ends up with the same bytes. Take the records s1..sK read from the
// log, and copy the image's ranges that cover them after they were read. `serve` logs a
// record before its image write (recording.ts), so the pass reads the image only once sK is
// settled (deltas.ts: a later record in the log, or a control call answered since): each of
// s1..sK was in the image when it was read back. For every byte, the copy holds the value of the last of s1..sK that wrote it, or of
// a later write. A later write has its own record past sK, which is sent after the pass
// and applied on top. Bytes of a copied range that no record touched hold either what the
// destination already has or, again, a later write with its own record. So once every
// record past sK is applied, each byte holds its last write, as with a replay. Torn reads
// (a write landing while we read) are the same case: that write's record comes later.
//
// All of a pass's frames carry sK; the destination moves its next sequence to sK + 1 only
// at the pass's last frame. A stream broken mid-pass therefore resumes from before s1, and
// replaying s1.. over a half-applied pass is the same argument again.

/** Copied ranges are widened to this alignment: cheaper reads, fewer frames, same result. */
export const COPY_ALIGN = 4096;
/** One COPY frame carries at most this much (well under a frame's payload limit). */
export const COPY_FRAME_MAX = 1024 * 1024;
/**
 * A pass is considered once this much log waits: below it, the log drains in a round or two.
 * Tests lower it (WANMIG_TEST_COPY_PASS_MIN, bytes) to reach a pass without a 64 MiB bulk.
 */
export const PASS_MIN_LOG_BYTES = Number(process.env.WANMIG_TEST_COPY_PASS_MIN) || 32 * 1024 * 1024;
/** A scan reads at most this much log: a pass is sent before the next one is planned. */
export const PASS_MAX_SCAN_BYTES = 1024 * 1024 * 1024;
/** A pass is made when the copied ranges are at most this share of the records' bytes. */
export const PASS_MAX_SHARE = 2 / 3;

export interface CopyRun {
  offset: number;
  length: number;
}

/** The ranges written by a run of records, merged and widened to COPY_ALIGN. */
export class WrittenRanges {
  private ranges: [number, number][] = [];
  /** Bytes of the records added (before merging). */
  recordBytes = 0;

  constructor(private readonly size: number) {}

  add(offset: number, length: number): void {
    this.recordBytes += length;
    if (length > 0) this.ranges.push([offset, offset + length]);
  }

  /** Sorted, disjoint, aligned runs covering every added range. */
  merged(): CopyRun[] {
    const sorted = this.ranges
      .map(([start, end]): [number, number] => [Math.floor(start / COPY_ALIGN) * COPY_ALIGN, Math.min(this.size, Math.ceil(end / COPY_ALIGN) * COPY_ALIGN)])
      .sort((a, b) => a[0] - b[0]);
    const out: CopyRun[] = [];
    let cur: [number, number] | undefined;
    for (const r of sorted) {
      if (cur && r[0] <= cur[1]) cur[1] = Math.max(cur[1], r[1]);
      else {
        if (cur) out.push({ offset: cur[0], length: cur[1] - cur[0] });
        cur = [r[0], r[1]];
      }
    }
    if (cur) out.push({ offset: cur[0], length: cur[1] - cur[0] });
    return out;
  }
}

export function totalLength(runs: CopyRun[]): number {
  return runs.reduce((sum, r) => sum + r.length, 0);
}

/** Whether copying `runs` beats sending the records: it must save a third of their bytes. */
export function passPays(recordBytes: number, runs: CopyRun[]): boolean {
  return recordBytes >= PASS_MIN_LOG_BYTES && totalLength(runs) <= recordBytes * PASS_MAX_SHARE;
}

/** Runs cut into frames of at most COPY_FRAME_MAX, in offset order. */
export function copyFrames(runs: CopyRun[]): CopyRun[] {
  const out: CopyRun[] = [];
  for (const r of runs)
    for (let at = r.offset; at < r.offset + r.length; at += COPY_FRAME_MAX) out.push({ offset: at, length: Math.min(COPY_FRAME_MAX, r.offset + r.length - at) });
  return out;
}
