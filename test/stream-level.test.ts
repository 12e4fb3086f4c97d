// The stream's level against the policy's moves (stream-level.ts), on synthetic sequences.
import { describe, expect, test } from "bun:test";
import { StreamLevel, SWITCH_AFTER_BYTES } from "../src/net/stream-level.ts";

const U = 4 * 1024 * 1024;
const run = (s: StreamLevel, wanted: number[]) => wanted.map((w) => s.next(w, U));

describe("StreamLevel", () => {
  test("the first piece's level is provisional: the second takes the policy's, and the third holds it", () => {
    expect(run(new StreamLevel(), [1, 9, 6])).toEqual([1, 9, 9]);
    expect(run(new StreamLevel(), [1, 1, 6])).toEqual([1, 1, 1]);
    const s = new StreamLevel();
    run(s, [1]);
    expect(s.settled).toBe(false); // the compressor still probes other levels on it
    run(s, [9]);
    expect(s.settled).toBe(true);
  });

  test("past its youth, a wandering policy (3, 6, 9, 6, 16) leaves the level alone", () => {
    const s = new StreamLevel();
    run(s, [9, 9, 9]);
    expect(run(s, [3, 6, 9, 6, 16, 19, 16, 19])).toEqual([9, 9, 9, 9, 9, 9, 9, 9]);
  });

  test("another level asked for over the window's span is taken, and held in turn", () => {
    const s = new StreamLevel();
    run(s, [3, 3, 3]);
    const units = SWITCH_AFTER_BYTES / U;
    const got = run(s, Array(units).fill(19));
    expect(got.slice(0, units - 1).every((l) => l === 3)).toBe(true);
    expect(got.at(-1)).toBe(19);
    expect(run(s, [9, 3])).toEqual([19, 19]);
  });

  test("an ask interrupted by the level in use starts its count again", () => {
    const s = new StreamLevel();
    run(s, [3, 3]);
    const half = SWITCH_AFTER_BYTES / U / 2;
    expect(run(s, [...Array(half).fill(19), 3, ...Array(half).fill(19)]).every((l) => l === 3)).toBe(true);
  });
});
