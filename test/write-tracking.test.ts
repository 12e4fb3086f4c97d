import { describe, expect, test } from "bun:test";
import { DIRTY_PIECE, DirtyMap } from "../src/disk/recording/write-tracking.ts";

describe("the serve's dirty map", () => {
  test("marks the 4 KiB pieces a write touches, as runs, and take() clears them", () => {
    const size = 10 * 1024 * 1024;
    const last = size / DIRTY_PIECE - 1;
    const m = new DirtyMap(size);
    m.mark(0, 1); // piece 0
    m.mark(DIRTY_PIECE - 1, 2); // pieces 0 and 1
    m.mark(31 * DIRTY_PIECE, 3 * DIRTY_PIECE); // pieces 31..33, across a word boundary
    m.mark(last * DIRTY_PIECE + 5, 1); // the last piece
    m.mark(64 * DIRTY_PIECE, 100 * DIRTY_PIECE); // whole words, and a run across three
    m.mark(100 * DIRTY_PIECE, 1); // inside it: no new run
    expect(m.take()).toEqual([
      [0, 2],
      [31, 3],
      [64, 100],
      [last, 1],
    ]);
    expect(m.take()).toEqual([]);
  });

  test("a range past the end is clipped; an image not a multiple of the piece keeps its tail", () => {
    const m = new DirtyMap(3 * DIRTY_PIECE + 100);
    m.mark(3 * DIRTY_PIECE, 10 * DIRTY_PIECE);
    expect(m.take()).toEqual([[3, 1]]);
  });
});
