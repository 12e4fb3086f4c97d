// The timeline drawn from events read back with their own instants, and a caller's counter
// panel (the paper bench's client answers) drawn as a rate. Then what a user reads off it
// (issue 30): the wire's throughput, never above the link's cap, over a stated window;
// units on every axis; whole levels on the throttle's; phase names inside the picture; a
// pause of 14 ms that shows.
import { describe, expect, test } from "bun:test";
import { axisTicks, labelWidth, meanRates, MIN_PAUSE_PX, type Point, smoothingWindow, throughLink, Timeline } from "../src/report/timeline.ts";

const MiB = 1 << 20;
const W = 960; // the picture's width
const CAP = 12_500_000; // --bandwidth 100mbit, bytes/s

/** A small deterministic generator: the same "random" samples every run. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

/**
 * A 6 s storage-only move at 100 Mbit/s as the source samples it: the wire count every
 * 250 ms (a late tick now and then), growing by whole 4 MiB BULK frames handed at once at
 * the cap's pace; the delta queue; the throttle level (0 here); the phases; a 14 ms pause.
 */
function move(t0: number, opts: { pauseMs?: number; levels?: (i: number) => number; cap?: (i: number) => number; held?: (i: number) => number } = {}): Timeline {
  const t = new Timeline();
  t.add({ event: "phase", phase: "init", at: t0 }, t0);
  t.add({ event: "phase", phase: "bulk", at: t0 + 60 }, t0 + 60);
  const frame = 4 * MiB + 336;
  const r = rng(7);
  let handed = 0;
  let nextFrame = t0 + 300;
  let at = t0 + 250;
  for (let i = 0; at < t0 + 6000; i++) {
    while (nextFrame <= at) {
      handed += frame;
      nextFrame += (frame / CAP) * 1000;
    }
    t.add({ event: "sample", at, wireBytes: handed, linkBytesPerSec: CAP, deltaQueue: Math.round(i * 37.5), heldWrites: opts.held?.(i) ?? 0, throttleLevel: opts.levels?.(i) ?? 0, rateCap: opts.cap?.(i) ?? 0 }, at);
    at += 250 + (r() < 0.1 ? 500 : 0);
  }
  t.add({ event: "phase", phase: "deltas", at: t0 + 5200 }, t0 + 5200);
  const fence = t0 + 6000 - (opts.pauseMs ?? 14) - 3;
  t.add({ event: "phase", phase: "handoff", at: fence }, fence);
  t.add({ event: "done", storageDowntimeMs: opts.pauseMs ?? 14 }, t0 + 6000);
  return t;
}

/** The y values (svg units) of a path's points. */
function pathYs(d: string): number[] {
  return [...d.matchAll(/[ML][\d.]+,([\d.]+)/g)].map((m) => Number(m[1]));
}

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
    expect(svg).toContain(">20<"); // the panel's scale: the rate, not the count (160)
    expect(svg).not.toContain(">160<");
    expect(svg).toContain("rotate(-90)\" text-anchor=\"middle\" fill=\"#333\">answers/s<"); // its unit, along its axis
    expect(svg).toContain("10 s"); // the axis spans the events' own instants
    expect(svg).toContain("pause (fence → verified, shaded): 2000 ms");
  });

  test("the mean over windows never exceeds a cap that every step of the count respects, whatever the sampling", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const r = rng(seed);
      const samples: Point[] = [{ t: 0, v: 0 }];
      for (let i = 0; i < 200; i++) {
        const last = samples[samples.length - 1]!;
        const dt = 1 + r() * 900; // irregular: late ticks, bursts of ticks
        samples.push({ t: last.t + dt, v: last.v + (r() < 0.3 ? 1 : r()) * CAP * (dt / 1000) });
      }
      for (const w of [250, 500, 1000, 5000]) {
        const rates = meanRates(samples, w);
        expect(rates.length).toBeGreaterThan(0);
        expect(Math.max(...rates.map((p) => p.v))).toBeLessThanOrEqual(CAP * (1 + 1e-9));
      }
    }
  });

  test("whole 4 MiB frames handed at the cap's pace: through the link, a flat line at the cap, not 16 MiB/s and 0 in turn", () => {
    const frame = 4 * MiB;
    const handed: Point[] = [];
    let v = 0;
    let next = 100;
    for (let t = 0; t <= 8000; t += 250) {
      while (next <= t) {
        v += frame;
        next += (frame / CAP) * 1000;
      }
      handed.push({ t, v });
    }
    // As counted (the old picture's lie, and the wire's own steps): windows of 16 MiB/s and of 0.
    const raw = meanRates(handed, 250).map((p) => p.v / MiB);
    expect(Math.max(...raw)).toBeGreaterThan(15.9);
    expect(Math.min(...raw)).toBe(0);
    // Through a link of that rate: never above it, and steady at it once the copy runs.
    const carried = throughLink(handed, CAP);
    const rates = meanRates(carried, 500);
    expect(Math.max(...rates.map((p) => p.v))).toBeLessThanOrEqual(CAP * (1 + 1e-9));
    for (const p of rates.filter((q) => q.t > 1000 && q.t < 7500)) expect(p.v).toBeGreaterThan(0.9 * CAP);
    // Every byte is drawn: what is still queued at the last sample drains after it, at the cap.
    expect(carried[carried.length - 1]!.v).toBe(handed[handed.length - 1]!.v);
    for (let i = 1; i < carried.length; i++) expect(carried[i]!.v - carried[i - 1]!.v).toBeLessThanOrEqual(((carried[i]!.t - carried[i - 1]!.t) / 1000) * CAP * (1 + 1e-9) + 1e-6);
  });

  test("the throughput panel: wire bytes after compression, its window stated, the cap drawn, the curve at or under it", () => {
    const svg = move(2_000_000).svg("a 6 s move at 100 Mbit/s");
    expect(svg).toContain("throughput (MiB/s)");
    expect(svg).toContain(`bytes on the wire (after compression), mean over each ${smoothingWindow(6000) / 1000} s`);
    expect(svg).toContain("cap 11.9 MiB/s (--bandwidth)");
    const capY = Number(/<line x1="\d+" y1="([\d.]+)" x2="\d+" y2="[\d.]+" stroke="#555" stroke-dasharray="6,4"\/>/.exec(svg)![1]);
    const wire = /<path d="([^"]+)" fill="none" stroke="#1f77b4"/.exec(svg)![1]!;
    // SVG's y grows downwards: at or under the cap is at or below its line (half a pixel for rounding).
    expect(Math.min(...pathYs(wire))).toBeGreaterThanOrEqual(capY - 0.5);
  });

  test("every axis carries its unit", () => {
    const svg = move(3_000_000).svg("units");
    for (const unit of ["MiB/s", "writes", "level"]) expect(svg).toContain(`rotate(-90)" text-anchor="middle" fill="#333">${unit}<`);
    expect(svg).toContain("delta queue (writes)");
    expect(svg).toMatch(/>\d+(\.\d+)? s</); // the time axis: seconds
  });

  test("the throttle's axis has whole levels; with no throttling it reads 0..1 and says so", () => {
    for (const max of [0, 1, 2, 3, 5, 7, 9, 13]) {
      const a = axisTicks(max, true);
      expect(a.ticks.every(Number.isInteger)).toBe(true);
      expect(a.top).toBeGreaterThanOrEqual(Math.max(1, max));
      expect(a.ticks[0]).toBe(0);
    }
    const ticksOf = (svg: string) => {
      // The throttle panel's tick labels: between its title and the end of its panel.
      const from = svg.indexOf("throttle level");
      const panel = svg.slice(from, svg.indexOf("</svg>"));
      return [...panel.matchAll(/text-anchor="end">([^<]+)</g)].map((m) => m[1]!).filter((s) => !s.startsWith("pause"));
    };
    const flat = move(4_000_000).svg("no throttling");
    expect(ticksOf(flat)).toEqual(["0", "1"]);
    expect(flat).toContain("no throttling: level 0 throughout");
    const busy = move(5_000_000, { levels: (i) => i % 4 }).svg("levels 0 to 3");
    const ticks = ticksOf(busy);
    expect(ticks.length).toBeGreaterThanOrEqual(2);
    for (const s of ticks) expect(Number.isInteger(Number(s))).toBe(true);
    expect(busy).not.toContain("no throttling");
  });

  test("the write cap has its own panel (the paper's level reads 0 under it), and held writes sit beside the queue", () => {
    const capped = move(9_000_000, { cap: (i) => (i >= 8 ? 5_000_000 : 0), held: (i) => (i >= 8 ? 16 : 0) }).svg("capped");
    expect(capped).toContain("VM write cap (MB/s)");
    expect(capped).toContain("held by the cap (not yet queued)");
    expect(capped).not.toContain("no cap: the VM wrote freely throughout");
    const free = move(9_000_000).svg("free");
    expect(free).toContain("no cap: the VM wrote freely throughout");
  });

  test("a 14 ms pause shows: at least MIN_PAUSE_PX wide, labelled with its real duration", () => {
    const svg = move(6_000_000, { pauseMs: 14 }).svg("a short pause");
    const marks = [...svg.matchAll(/<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)" height="[\d.]+" fill="#d62728"/g)];
    expect(marks.length).toBe(4); // one per panel
    for (const m of marks) {
      expect(Number(m[2])).toBeGreaterThanOrEqual(MIN_PAUSE_PX - 0.1);
      expect(Number(m[1]) + Number(m[2])).toBeLessThanOrEqual(W); // inside the picture
    }
    expect(MIN_PAUSE_PX).toBeGreaterThanOrEqual(4);
    expect(svg).toContain(">pause 14 ms<");
    expect(svg).toContain(`pause (fence → verified, shaded): 14 ms, drawn ${MIN_PAUSE_PX} px wide`);
    // A long pause is drawn as long as it is, and not said to be widened.
    const long = move(6_100_000, { pauseMs: 1500 }).svg("a long pause");
    expect(long).toContain("pause (fence → verified, shaded): 1500 ms");
  });

  test("freeze-and-copy's pause (fenced before its bulk copy) ends at done, inside the picture, however late its hand-off", () => {
    const t = new Timeline();
    const t0 = 9_000_000;
    t.add({ event: "phase", phase: "init", at: t0 }, t0);
    t.add({ event: "phase", phase: "bulk", at: t0 + 500 }, t0 + 500);
    for (let ms = 500; ms <= 5500; ms += 250) t.add({ event: "sample", at: t0 + ms, wireBytes: (ms - 500) * 10_000 }, t0 + ms);
    t.add({ event: "phase", phase: "handoff", at: t0 + 5600 }, t0 + 5600);
    t.add({ event: "done", storageDowntimeMs: 5300 }, t0 + 5800);
    const svg = t.svg("freeze-and-copy");
    const m = /<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)" height="[\d.]+" fill="#d62728"/.exec(svg)!;
    expect(Number(m[1]) + Number(m[2])).toBeLessThanOrEqual(W - 20 + 0.1);
    expect(Number(m[2])).toBeGreaterThan(700); // 5.3 s of a 5.8 s picture
    expect(svg).toContain("pause (fence → verified, shaded): 5300 ms");
  });

  test("the .html page holds the same drawing, and its figures readable (parts as JSON)", () => {
    const html = move(8_000_000).html("a page", { storageDowntimeMs: 14, storageDowntimeParts: { digestMs: 3 } });
    expect(html).toContain(move(8_000_000).svg("a page"));
    expect(html).toContain("<td>storageDowntimeParts</td><td>{&quot;digestMs&quot;:3}</td>");
    expect(html).not.toContain("[object Object]");
  });

  test("phase names stay inside the width, and do not overlap one another", () => {
    const t = move(7_000_000);
    // More phases crowded at the end: a VM's memory, a redirect, the hand-off, 14 ms apart.
    for (const [k, name] of ["redirect", "memory"].entries()) t.add({ event: "phase", phase: name, at: 7_000_000 + 5950 + k * 10 }, 7_000_000 + 5950 + k * 10);
    const svg = t.svg("crowded");
    const labels = [...svg.matchAll(/<text x="([\d.]+)" y="([\d.]+)" font-size="10" fill="#555">([^<]+)</g)].map((m) => ({ x: Number(m[1]), y: Number(m[2]), name: m[3]! }));
    expect(labels.map((l) => l.name).sort()).toEqual(["bulk", "deltas", "handoff", "init", "memory", "redirect"]);
    for (const l of labels) {
      expect(l.x).toBeGreaterThanOrEqual(0);
      expect(l.x + labelWidth(l.name, 10)).toBeLessThanOrEqual(W);
    }
    for (const a of labels) for (const b of labels) if (a !== b && a.y === b.y) expect(a.x + labelWidth(a.name, 10) <= b.x || b.x + labelWidth(b.name, 10) <= a.x).toBe(true);
  });
});
