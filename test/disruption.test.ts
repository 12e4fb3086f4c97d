import { describe, expect, test } from "bun:test";
import { type ClientOp, measureDisruption } from "../src/report/disruption.ts";

/** A closed-loop client: one operation after another, each taking `latency(t)` ms (undefined: it failed after 1 s). */
function client(untilMs: number, latency: (t: number) => number | undefined): ClientOp[] {
  const ops: ClientOp[] = [];
  for (let t = 0; t < untilMs; ) {
    const l = latency(t);
    ops.push({ start: t, end: t + (l ?? 1000), ok: l !== undefined });
    t += (l ?? 1000) + 10; // 10 ms of think time
  }
  return ops;
}

describe("measureDisruption", () => {
  test("a client that never noticed the migration: no disruption", () => {
    const d = measureDisruption(client(10_000, () => 20), { baselineUntil: 3000 });
    expect(d.disruptionMs).toBe(0);
    expect(d.baselineLatencyMs).toBe(20);
    expect(d.baselineGapMs).toBe(30);
    expect(d.slowOps + d.failedOps).toBe(0);
  });

  test("a 2 s stall (one request held across the pause) counts as the stall less what a normal request and pause may take", () => {
    const d = measureDisruption(client(10_000, (t) => (t >= 5000 && t < 5040 ? 2000 : 20)), { baselineUntil: 3000 });
    expect(d.slowOps).toBe(1);
    expect(d.allowanceMs).toBe(130); // 120 ms (20 + the 100 ms floor) and 10 ms of think time
    expect(d.disruptionMs).toBeGreaterThan(2000 - 130);
    expect(d.disruptionMs).toBeLessThan(2000);
    expect(d.from).toBeLessThan(5040);
    expect(d.to).toBeGreaterThan(7000);
  });

  test("slow but answering is reduced responsiveness too: 1.5 s of 200 ms answers (10× the baseline)", () => {
    const d = measureDisruption(client(10_000, (t) => (t >= 5000 && t < 6500 ? 200 : 20)), { baselineUntil: 3000 });
    expect(d.slowOps).toBeGreaterThan(5);
    expect(d.disruptionMs).toBeGreaterThan(1400);
    expect(d.disruptionMs).toBeLessThan(1800);
  });

  test("jitter within the floor (20 ms becoming 90 ms) is not disruption; failures are", () => {
    expect(measureDisruption(client(10_000, (t) => (t >= 5000 && t < 6000 ? 90 : 20)), { baselineUntil: 3000 }).disruptionMs).toBe(0);
    const failing = measureDisruption(client(10_000, (t) => (t >= 5000 && t < 8000 ? undefined : 20)), { baselineUntil: 3000 });
    expect(failing.failedOps).toBe(3);
    expect(failing.disruptionMs).toBeGreaterThan(2800);
  });

  test("a client that never got a normal answer again is disrupted until it stopped", () => {
    const d = measureDisruption(client(10_000, (t) => (t >= 6000 ? undefined : 20)), { baselineUntil: 3000 });
    expect(d.to).toBeGreaterThanOrEqual(10_000);
    expect(d.disruptionMs).toBeGreaterThan(3800);
  });

  test("no baseline, no figure: the client must have worked before the migration", () => {
    expect(() => measureDisruption(client(5000, () => undefined), { baselineUntil: 3000 })).toThrow("a baseline needs at least 2 successful operations");
  });
});
