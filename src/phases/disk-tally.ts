// Deltas per disk of a VM with several (the migration itself works on their one space,
// image-set.ts): how many records touched each disk and their bytes, over the whole run and
// in the hand-off alone, for the done event and the operator's per-disk figures.

export interface DiskDeltas {
  deltas: number;
  bytes: number;
}

export interface DiskFigures extends DiskDeltas {
  export: string;
  /** Of those, shipped in the hand-off (after the fence): the storage downtime's share of each disk. */
  finalDeltas: number;
  finalBytes: number;
}

export class DiskTally {
  private readonly counts: DiskDeltas[];
  private atFence?: DiskDeltas[];

  constructor(private readonly places: readonly { offset: number; size: number }[]) {
    this.counts = places.map(() => ({ deltas: 0, bytes: 0 }));
  }

  /** A record over [offset, offset + length): one delta for each disk it touches, and its bytes there. */
  note(offset: number, length: number): void {
    const end = offset + length;
    for (const [i, p] of this.places.entries()) {
      const from = Math.max(offset, p.offset);
      const to = Math.min(end, p.offset + p.size);
      if (from >= to) continue;
      this.counts[i]!.deltas++;
      this.counts[i]!.bytes += Math.max(0, to - from);
    }
  }

  /** What was counted before the fence: the rest is the hand-off's. */
  markFence(): void {
    this.atFence = this.counts.map((c) => ({ ...c }));
  }

  figures(): DiskFigures[] {
    return this.counts.map((c, i) => {
      const before = this.atFence?.[i] ?? c;
      return { export: `disk${i}`, deltas: c.deltas, bytes: c.bytes, finalDeltas: c.deltas - before.deltas, finalBytes: c.bytes - before.bytes };
    });
  }
}
