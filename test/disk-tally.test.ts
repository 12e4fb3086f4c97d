import { describe, expect, test } from "bun:test";
import { DiskTally } from "../src/phases/disk-tally.ts";

describe("DiskTally", () => {
  test("records are counted on the disk they touch; one across a boundary counts on both; the hand-off's share is what came after the fence", () => {
    const t = new DiskTally([
      { offset: 0, size: 100 },
      { offset: 100, size: 50 },
    ]);
    t.note(10, 20);
    t.note(120, 4);
    t.note(90, 20); // 10 bytes on each
    t.markFence();
    t.note(140, 10);
    expect(t.figures()).toEqual([
      { export: "disk0", deltas: 2, bytes: 30, finalDeltas: 0, finalBytes: 0 },
      { export: "disk1", deltas: 3, bytes: 24, finalDeltas: 1, finalBytes: 10 },
    ]);
  });

  test("without a fence (a run that never reached the hand-off) nothing is counted as final", () => {
    const t = new DiskTally([{ offset: 0, size: 100 }]);
    t.note(0, 4);
    expect(t.figures()).toEqual([{ export: "disk0", deltas: 1, bytes: 4, finalDeltas: 0, finalBytes: 0 }]);
  });
});
