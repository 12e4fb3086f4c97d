// The timeline drawn from events read back with their own instants, and a caller's counter
// panel (the paper bench's client answers) drawn as a rate.
import { describe, expect, test } from "bun:test";
import { Timeline } from "../src/report/timeline.ts";

describe("the timeline", () => {
  test("events placed at the instants given; a cumulative counter becomes a rate per second in its own panel", () => {
    const t = new Timeline();
    const t0 = 1_000_000;
    t.add({ event: "phase", phase: "bulk", at: t0 }, t0);
    t.add({ event: "phase", phase: "handoff", at: t0 + 8000 }, t0 + 8000);
    t.add({ event: "done" }, t0 + 10_000);
    // 20 answers a second for 10 s, none in [4 s, 6 s).
    const samples = [];
    let n = 0;
    for (let ms = 0; ms < 10_000; ms += 50) if (ms < 4000 || ms >= 6000) samples.push({ t: t0 + ms, v: ++n });
    t.addCounter("the client: successful operations per second", "answers", samples);
    const svg = t.svg("a row");
    expect(svg).toContain("the client: successful operations per second");
    expect(svg).toContain(">20.0<"); // the panel's scale: the rate, not the count (160)
    expect(svg).toContain("10 s"); // the axis spans the events' own instants
    expect(svg).toContain("pause (fence → verified, shaded): 2000 ms");
  });
});
