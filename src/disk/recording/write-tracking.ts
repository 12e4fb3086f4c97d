// The serve's own account of what it wrote while recording, kept apart from the delta log
// so that the hand-off can check the log against it:
//  - a count of the writes applied to the image (the log must hold exactly as many records);
//  - a dirty map of the 4 KiB pieces they touched, which the migrating source takes (and
//    clears) as it goes and marks in its region digests beside what the log says. A write
//    that reached the image but not the log then still gets rehashed, and the digests of
//    the two images differ: the hand-off fails instead of passing a disk that lacks it.
//
// It sits directly on the file, below recording: whatever path a write took through the
// decorators above, it is counted and marked in the turn it is applied.

import { BackendDecorator, type MaybePromise } from "../block/backend.ts";
import { type Payload, payloadLength } from "../block/payload.ts";

/** The digest's piece (region-digest.ts): a write marks what the hand-off must rehash, no more. */
export const DIRTY_PIECE = 4096;

/**
 * One bit per 4 KiB piece, kept sparse (32-piece words that have a bit set), so memory and
 * take() grow with what was written since the last take, not with the image: the source
 * takes it every 50 ms, and a 1 TiB image would be 8 M words to scan.
 */
export class DirtyMap {
  private words = new Map<number, number>();
  private readonly pieces: number;

  constructor(readonly size: number) {
    this.pieces = Math.ceil(size / DIRTY_PIECE);
  }

  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / DIRTY_PIECE);
    const last = Math.min(Math.floor((offset + length - 1) / DIRTY_PIECE), this.pieces - 1);
    for (let p = first; p <= last; ) {
      const w = p >>> 5;
      const from = p & 31;
      const to = Math.min(31, last - (w << 5));
      const bits = to - from === 31 ? 0xffffffff : ((1 << (to - from + 1)) - 1) << from;
      this.words.set(w, (this.words.get(w) ?? 0) | bits);
      p = (w << 5) + to + 1;
    }
  }

  /** Dirty pieces as [first piece, count] runs, in order; clears them. */
  take(): [number, number][] {
    const runs: [number, number][] = [];
    if (!this.words.size) return runs;
    const words = [...this.words].sort((x, y) => x[0] - y[0]);
    this.words = new Map();
    let start = -1;
    let end = -1; // one past the last dirty piece of the open run
    for (const [w, word] of words) {
      for (let b = 0; b < 32; b++) {
        if (!((word >>> b) & 1)) continue;
        const p = (w << 5) + b;
        if (p === end) end++;
        else {
          if (start >= 0) runs.push([start, end - start]);
          start = p;
          end = p + 1;
        }
      }
    }
    if (start >= 0) runs.push([start, end - start]);
    return runs;
  }
}

export class TrackingBackend extends BackendDecorator {
  private map?: DirtyMap;
  /** Writes, zeroes and trims applied since tracking began (plus those a resumed recording had). */
  applied = 0;

  get tracking(): boolean {
    return this.map !== undefined;
  }

  start(alreadyApplied = 0): void {
    this.map = new DirtyMap(this.size);
    this.applied = alreadyApplied;
  }

  stop(): void {
    this.map = undefined;
  }

  takeDirty(): [number, number][] {
    return this.map?.take() ?? [];
  }

  override write(offset: number, data: Payload, fua: boolean): MaybePromise<void> {
    this.note(offset, payloadLength(data));
    return super.write(offset, data, fua);
  }
  override zero(offset: number, length: number, fua: boolean, mayPunch: boolean): MaybePromise<void> {
    this.note(offset, length);
    return super.zero(offset, length, fua, mayPunch);
  }
  override trim(offset: number, length: number, fua: boolean): MaybePromise<void> {
    this.note(offset, length);
    return super.trim(offset, length, fua);
  }

  private note(offset: number, length: number): void {
    if (!this.map) return;
    this.map.mark(offset, length);
    this.applied++;
  }
}
