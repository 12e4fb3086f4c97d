// What a resumed migration sent twice. A link lost mid-migration loses what was in flight;
// the next connection resumes from where the destination says it got (READY's bulk offset and
// next delta), and everything the last connection sent past that point crosses again. That
// amount is the cost of the cut, and the figure an operator (and issue 32's 1 % target)
// needs: `bytesOnWire` alone cannot tell a resume that resent 4 MiB from one that resent all.
//
// Each connection notes, as it goes, how many bytes it had sent when it reached a position in
// the migration's order (bulk offsets, then delta sequence numbers). On a resume, the bytes
// the old connection sent from the resume point on are the marks' difference, interpolated
// inside the mark that holds the point.

/** A point in the migration's order: every bulk offset comes before every delta. */
export type Position = { bulk: number } | { seq: bigint };

/** A mark at most this far past the last: a long catch-up notes thousands of records, kept to one mark per MiB. */
const MARK_EVERY_BYTES = 1024 * 1024;

interface Mark {
  key: number; // bulk offset, or for deltas Number.MAX_SAFE_INTEGER + seq's rank (see rank())
  seq?: bigint;
  wire: number;
}

export class ResendLedger {
  private marks: Mark[] = [];
  /** Bytes sent again over all resumes. */
  resent = 0;

  /** The connection had sent `wire` bytes (counted from its start) when it reached `at`. */
  note(at: Position, wire: number): void {
    const last = this.marks.at(-1);
    if (last && wire - last.wire < MARK_EVERY_BYTES && sameKind(last, at)) return;
    this.marks.push("bulk" in at ? { key: at.bulk, wire } : { key: Number.POSITIVE_INFINITY, seq: at.seq, wire });
  }

  /**
   * The connection ended having sent `sentTotal` bytes; the next resumes at `from`. Adds what
   * was sent from `from` on to `resent`, returns it, and starts over for the next connection.
   */
  resume(from: Position, sentTotal: number): number {
    const again = Math.max(0, sentTotal - this.wireAt(from, sentTotal));
    this.resent += again;
    this.marks = [];
    return again;
  }

  /** Bytes sent before `at`: interpolated between the marks around it; nothing sent reached it: all of it. */
  private wireAt(at: Position, sentTotal: number): number {
    const ms = this.marks;
    const i = ms.findIndex((m) => !before(m, at));
    if (i < 0) {
      // Past the last mark: that mark's frame was under way; count what followed it, byte for byte, up to the point.
      const last = ms.at(-1);
      if (!last || !("bulk" in at) || last.seq !== undefined) return sentTotal;
      return Math.min(sentTotal, last.wire + (at.bulk - last.key));
    }
    if (i === 0 || !("bulk" in at) || ms[i - 1]!.seq !== undefined) return ms[i]!.wire;
    const a = ms[i - 1]!;
    const b = ms[i]!;
    if (b.seq !== undefined) return a.wire; // the point lies past the bulk marks: interpolation has no end
    return a.wire + ((at.bulk - a.key) / (b.key - a.key)) * (b.wire - a.wire);
  }
}

function sameKind(m: Mark, at: Position): boolean {
  return (m.seq === undefined) === "bulk" in at;
}

/** Whether mark `m` lies strictly before position `at`. */
function before(m: Mark, at: Position): boolean {
  if ("bulk" in at) return m.seq === undefined && m.key < at.bulk;
  return m.seq === undefined || m.seq < at.seq;
}
