// Copy passes' planning on synthetic ranges: what a pass would copy, and when it pays.
import { describe, expect, test } from "bun:test";
import { COPY_FRAME_MAX, copyFrames, PASS_MIN_LOG_BYTES, passPays, WrittenRanges } from "../src/phases/copy-pass.ts";

const MiB = 1024 * 1024;

describe("WrittenRanges", () => {
  test("overlapping, touching and repeated writes merge; each run is widened to 4 KiB and clipped to the image", () => {
    const w = new WrittenRanges(10 * MiB);
    w.add(5000, 100); // inside [4096, 8192)
    w.add(8192, 4096); // touches it
    w.add(0, 10); // [0, 4096): touches too
    w.add(1 * MiB, 1 * MiB);
    w.add(1 * MiB + 4096, 4096); // inside the last
    w.add(10 * MiB - 1, 1); // clipped at the end
    w.add(3 * MiB, 0); // a zero-length write touches nothing
    expect(w.merged()).toEqual([
      { offset: 0, length: 12288 },
      { offset: 1 * MiB, length: 1 * MiB },
      { offset: 10 * MiB - 4096, length: 4096 },
    ]);
    expect(w.recordBytes).toBe(100 + 4096 + 10 + MiB + 4096 + 1);
  });

  test("a writer rewriting 4 MiB over and over: the pass copies 4 MiB, whatever the log holds", () => {
    const w = new WrittenRanges(64 * MiB);
    for (let round = 0; round < 20; round++) for (let at = 0; at < 4 * MiB; at += MiB) w.add(8 * MiB + at, MiB);
    const runs = w.merged();
    expect(runs).toEqual([{ offset: 8 * MiB, length: 4 * MiB }]);
    expect(passPays(w.recordBytes, runs)).toBe(true);
  });
});

describe("passPays", () => {
  test("not for a short log, however repetitive: it drains in a round or two", () => {
    expect(passPays(PASS_MIN_LOG_BYTES - 1, [{ offset: 0, length: 4096 }])).toBe(false);
  });

  test("not when the ranges are most of the records' bytes (writes that rarely repeat)", () => {
    expect(passPays(100 * MiB, [{ offset: 0, length: 70 * MiB }])).toBe(false);
    expect(passPays(100 * MiB, [{ offset: 0, length: 66 * MiB }])).toBe(true);
  });
});

describe("copyFrames", () => {
  test("runs are cut into frames of at most 1 MiB, in offset order, covering every byte once", () => {
    const frames = copyFrames([
      { offset: 0, length: 4096 },
      { offset: 2 * MiB, length: 2 * MiB + 8192 },
    ]);
    expect(frames).toEqual([
      { offset: 0, length: 4096 },
      { offset: 2 * MiB, length: COPY_FRAME_MAX },
      { offset: 3 * MiB, length: COPY_FRAME_MAX },
      { offset: 4 * MiB, length: 8192 },
    ]);
  });
});
