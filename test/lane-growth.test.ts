// --streams auto's growth (open-lanes.ts LaneGrowth) on a synthetic drain meter: the one
// stream's recent rate decides, not its life-long average, which still carries slow start.
import { describe, expect, test } from "bun:test";
import type { Channel } from "../src/net/channel.ts";
import { socketBufferMax } from "../src/net/stream-count.ts";
import { LaneGrowth } from "../src/phases/source/open-lanes.ts";

const RTT_MS = 100;
/** Bytes per ms past which one stream counts as window-bound on this host (stream-count.ts windowBound). */
const { sendBufMax, recvBufMax } = socketBufferMax();
const LINE = (0.5 * 0.75 * Math.min(sendBufMax, recvBufMax)) / RTT_MS;

/** A channel whose drain meter has seen `stretches` of backlogged time, each [ms, bytes per ms]. */
function meter() {
  const totals = { busyMs: 0, busyBytes: 0 };
  return {
    ch: { drainTotals: () => ({ ...totals }) } as unknown as Channel,
    drain(ms: number, bytesPerMs: number) {
      totals.busyMs += ms;
      totals.busyBytes += ms * bytesPerMs;
    },
  };
}

describe("LaneGrowth", () => {
  test("slow start then a window-bound stream: opens on the recent rate, though the life-long average is still under the line", () => {
    const m = meter();
    let opened = 0;
    const g = new LaneGrowth(m.ch, RTT_MS, async () => void opened++);
    for (let i = 0; i < 12; i++) {
      m.drain(100, 0.1 * LINE); // slow start: 1.2 s well under the line
      g.check();
    }
    expect(opened).toBe(0);
    for (let i = 0; i < 4; i++) {
      m.drain(100, 2 * LINE);
      g.check();
    }
    // The average over the whole life: (1200 × 0.1 + 400 × 2) / 1600 = 0.58 of the line.
    expect(opened).toBe(1);
    m.drain(1000, 2 * LINE);
    g.check();
    expect(opened).toBe(1); // once
  });

  test("a slow link (5 Mbit/s at 100 ms) never opens more, however long it runs", () => {
    const m = meter();
    let opened = 0;
    const g = new LaneGrowth(m.ch, RTT_MS, async () => void opened++);
    for (let i = 0; i < 600; i++) {
      m.drain(100, 625);
      g.check();
    }
    expect(opened).toBe(0);
  });

  test("a socket buffer taken at once (the kernel's, freed) and then a slow link: no more streams", () => {
    const m = meter();
    let opened = 0;
    const g = new LaneGrowth(m.ch, RTT_MS, async () => void opened++);
    m.drain(10, sendBufMax / 10);
    g.check();
    for (let i = 0; i < 39; i++) {
      m.drain(10, 625);
      g.check();
    }
    expect(opened).toBe(0);
  });
});
