// The serve's own account of what it wrote while recording, kept apart from the delta log
// so that the hand-off can check the log against it:
//  - a count of the writes applied to the image (the log must hold exactly as many records);
//  - a dirty map of the 64 KiB pieces they touched, which the migrating source takes (and
//    clears) as it goes and marks in its region digests beside what the log says. A write
//    that reached the image but not the log then still gets rehashed, and the digests of
//    the two images differ: the hand-off fails instead of passing a disk that lacks it.
//
// It sits directly on the file, below recording: whatever path a write took through the
// decorators above, it is counted and marked in the turn it is applied.

import { BackendDecorator, type MaybePromise } from "./backend.ts";

export const DIRTY_PIECE = 64 * 1024;

/** One bit per 64 KiB piece; `take` returns the dirty runs and clears them. */
export class DirtyMap {
  private readonly words: Uint32Array;
  private marked = 0;

  constructor(readonly size: number) {
    this.words = new Uint32Array(Math.ceil(Math.ceil(size / DIRTY_PIECE) / 32));
  }

  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / DIRTY_PIECE);
    const last = Math.floor((Math.min(offset + length, this.size) - 1) / DIRTY_PIECE);
    for (let p = first; p <= last; p++) this.words[p >>> 5]! |= 1 << (p & 31);
    this.marked++;
  }

  /** Dirty pieces as [first piece, count] runs, oldest knowledge cleared. */
  take(): [number, number][] {
    const runs: [number, number][] = [];
    if (!this.marked) return runs;
    this.marked = 0;
    let start = -1;
    const pieces = this.words.length * 32;
    for (let w = 0; w < this.words.length; w++) {
      const word = this.words[w]!;
      if (word === 0 && start < 0) continue;
      for (let b = 0; b < 32; b++) {
        const p = w * 32 + b;
        const set = (word >>> b) & 1;
        if (set && start < 0) start = p;
        if (!set && start >= 0) {
          runs.push([start, p - start]);
          start = -1;
        }
      }
      this.words[w] = 0;
    }
    if (start >= 0) runs.push([start, pieces - start]);
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

  override write(offset: number, data: Uint8Array, fua: boolean): MaybePromise<void> {
    this.note(offset, data.length);
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
