// `--deltas coalesce`: send fewer deltas without changing the result.
//
// 1. Skip deltas the bulk copy already carries. Before the bulk copy reads a chunk of the
//    image, we note how long the delta log is. A record that ends before that length has
//    a successor that had begun to be appended, and so (serve logs a record, then writes
//    the image, then logs the next, see recording.ts) its write was in the image before the
//    chunk was read: the chunk carries that write or a later one, and every later one has
//    its own record past the noted length. So a record whose whole range lies in chunks
//    that were all read after it was settled can be dropped. (The record that ends right at
//    the noted length may have been logged with its image write still to come: kept.)
// 2. Coalesce repeated writes: within one batch read from the log, a record followed by
//    another with exactly the same range is dropped; the later one is applied after it
//    and covers every byte it wrote.
// Dropped records leave gaps in the sequence numbers the destination sees; it requires
// them to increase, not to be contiguous.

import type { DeltaRecord } from "../disk/recording/delta-log.ts";

/** Bulk reads happen in chunks aligned to this size (see bulk.ts). */
export const BULK_CHUNK = 4 * 1024 * 1024;

export class BulkReadLog {
  /** chunk index -> delta log length just before the bulk copy read the chunk */
  private logLengthAtRead = new Map<number, number>();

  noteRead(offset: number, logLength: number): void {
    // A chunk read twice (a resume restarts mid-chunk, or re-reads what was lost in
    // flight) carries only what was in the image before *both* reads: keep the earlier.
    const i = Math.floor(offset / BULK_CHUNK);
    const before = this.logLengthAtRead.get(i);
    this.logLengthAtRead.set(i, before === undefined ? logLength : Math.min(before, logLength));
  }

  /** True when the bulk copy read the whole range after this record reached the image. */
  carries(rec: DeltaRecord): boolean {
    const first = Math.floor(rec.offset / BULK_CHUNK);
    const last = Math.floor((rec.offset + Math.max(rec.length, 1) - 1) / BULK_CHUNK);
    for (let i = first; i <= last; i++) {
      const at = this.logLengthAtRead.get(i);
      if (at === undefined || rec.end >= at) return false;
    }
    return true;
  }
}

/** Drops each record whose exact range is written again later in the same batch. */
export function coalesceBatch(batch: DeltaRecord[]): DeltaRecord[] {
  const lastIndex = new Map<string, number>();
  batch.forEach((r, i) => lastIndex.set(`${r.offset}:${r.length}`, i));
  return batch.filter((r, i) => lastIndex.get(`${r.offset}:${r.length}`) === i);
}
