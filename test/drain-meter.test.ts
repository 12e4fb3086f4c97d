// The link's rate as the sender measures it (drain-meter.ts), on synthetic timelines.
import { describe, expect, test } from "bun:test";
import { DrainMeter } from "../src/net/drain-meter.ts";

/** Feeds (at ms, handed bytes, backlog) observations. */
function feed(m: DrainMeter, steps: [number, number, boolean][]): DrainMeter {
  for (const [at, handed, backlog] of steps) m.observe(at, handed, backlog);
  return m;
}

describe("DrainMeter", () => {
  test("what the kernel swallowed before any backlog says nothing of the link", () => {
    const m = feed(new DrainMeter(), [
      [0, 0, false],
      [1, 4_000_000, false], // the socket buffer took 4 MB at once
      [2, 4_000_000, true],
    ]);
    expect(m.bytesPerMs(0)).toBeUndefined();
    // A 1000 B/ms link from there.
    for (let t = 100; t <= 1000; t += 100) m.observe(2 + t, 4_000_000 + 1000 * t, true);
    expect(m.bytesPerMs(200)).toBe(1000);
  });

  test("idle time between backlogs (the sender busy elsewhere) does not lower it", () => {
    const m = new DrainMeter();
    // Backlogged 300 ms at 1000 B/ms, 2 s with nothing waiting (a few bytes go out), backlogged 300 ms again.
    feed(m, [
      [0, 0, true],
      [300, 300_000, false],
      [1300, 300_100, false],
      [2300, 300_200, true],
      [2600, 600_200, false],
    ]);
    expect(m.bytesPerMs(200)).toBe(1000);
  });

  test("a stall of the path with bytes waiting counts: that is the path's rate", () => {
    const m = feed(new DrainMeter(), [
      [0, 0, true],
      [500, 500_000, true],
      [1500, 500_000, true], // the receiver stopped reading for a second
      [2000, 1_000_000, false],
    ]);
    expect(m.bytesPerMs(200)).toBe(500);
  });

  test("no verdict before backlogged stretches add up to the minimum", () => {
    const m = feed(new DrainMeter(), [
      [0, 0, true],
      [150, 150_000, false],
    ]);
    expect(m.bytesPerMs(200)).toBeUndefined();
    feed(m, [
      [5000, 150_000, true],
      [5060, 210_000, true],
    ]);
    expect(m.bytesPerMs(200)).toBe(1000);
  });
});
