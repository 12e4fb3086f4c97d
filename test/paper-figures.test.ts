// The paper bench's metrics on synthetic rows: what each figure is made of, and the check
// that no acknowledged post was lost.
import { describe, expect, test } from "bun:test";
import { lostPosts, medianFigures, parsePosts, rowFigures } from "../scripts/bench/paper-figures.ts";
import type { OpLine } from "../scripts/bench/paper-client.ts";

const done = { deltaCount: 120, deltaRatePerSec: 10, throttleSteps: 1, storageDowntimeMs: 40, bytesOnWire: 3 * 1024 * 1024 };

/** A client answered in 5 ms every 20 ms from t=0 to t=20 s, silent in [pauseFrom, pauseTo). */
function client(pauseFrom: number, pauseTo: number): OpLine[] {
  const ops: OpLine[] = [];
  for (let t = 0; t < 20_000; t += 20) {
    if (t >= pauseFrom && t < pauseTo) continue;
    ops.push({ start: t, end: t + 5, ok: true });
  }
  return ops;
}

describe("the paper's figures for one row", () => {
  test("downtime is paused → running; migration time is request → running; additional disruption is disruption less downtime", () => {
    const f = rowFigures({ requestedAt: 5000, pausedAt: 12_000, runningAt: 12_300, done }, client(12_000, 13_000));
    expect(f.downtimeMs).toBe(300);
    expect(f.migrationS).toBeCloseTo(7.3, 5);
    // The client saw 1 s without an answer; a normal answer may take 105 ms (5 ms + the 100 ms floor).
    expect(f.disruptionMs).toBeGreaterThan(850);
    expect(f.disruptionMs).toBeLessThan(1000);
    expect(f.additionalMs).toBe(f.disruptionMs - 300);
    expect(f.deltas).toBe(120);
    expect(f.deltaRate).toBe(10);
    expect(f.throttleSteps).toBe(1);
    expect(f.wireMiB).toBe(3);
    expect(f.failedOps).toBe(0);
  });

  test("a client that hung until it was stopped: its disruption runs to the stop, and the stopped operation is not counted as a failure", () => {
    const ops = client(12_000, 20_000).filter((op) => op.end < 12_000);
    ops.push({ start: 12_000, end: 20_000, ok: false, stopped: true, error: "no answer yet when the client was stopped" });
    const f = rowFigures({ requestedAt: 5000, pausedAt: 12_000, runningAt: 12_300, done }, ops);
    expect(f.disruptionMs).toBeGreaterThan(7800);
    expect(f.failedOps).toBe(0);
  });

  test("a disruption shorter than the downtime is no additional disruption (never below 0)", () => {
    const f = rowFigures({ requestedAt: 5000, pausedAt: 12_000, runningAt: 14_000, done }, client(12_000, 12_500));
    expect(f.additionalMs).toBe(0);
  });

  test("without the hypervisor's events there is no downtime and no migration time, not a made-up one", () => {
    const f = rowFigures({ requestedAt: 5000, done }, client(12_000, 13_000));
    expect(f.downtimeMs).toBeUndefined();
    expect(f.additionalMs).toBeUndefined();
    expect(f.migrationS).toBeUndefined();
  });

  test("no baseline before the request: an error, not a figure", () => {
    expect(() => rowFigures({ requestedAt: 0, done }, client(12_000, 13_000))).toThrow(/baseline/);
  });

  test("every acknowledged post must be on the disk; unacknowledged ones may be missing", () => {
    const ops: OpLine[] = [
      { start: 0, end: 1, ok: true, id: 1, acked: true },
      { start: 1, end: 2, ok: true, id: 2, acked: true },
      { start: 2, end: 30_000, ok: false, id: 3, acked: false, error: "timeout" },
      { start: 30_000, end: 30_001, ok: true, id: 4, acked: true },
    ];
    expect(lostPosts(ops, [1, 2, 4])).toEqual([]);
    expect(lostPosts(ops, [1, 2, 3, 4])).toEqual([]);
    expect(lostPosts(ops, [1, 4])).toEqual([2]);
  });

  test("the posts file: one POST N per line; anything else is an error", () => {
    expect(parsePosts("POST 1\nPOST 2\n\n")).toEqual([1, 2]);
    expect(() => parsePosts("POST 1\nPOS")).toThrow(/not a post/);
  });

  test("medians over runs, figure by figure", () => {
    const a = rowFigures({ requestedAt: 5000, pausedAt: 12_000, runningAt: 12_100, done }, client(12_000, 13_000));
    const b = { ...a, downtimeMs: 300, deltas: 10 };
    const c = { ...a, downtimeMs: 200, deltas: 30 };
    const m = medianFigures([a, b, c]);
    expect(m.downtimeMs).toBe(200);
    expect(m.deltas).toBe(30);
    expect(medianFigures([a, b]).downtimeMs).toBe(200);
  });
});

describe("the paper bench's table", () => {
  const figures = rowFigures({ requestedAt: 5000, pausedAt: 12_000, runningAt: 12_300, done }, client(12_000, 13_000));
  test("a row per workload and mode, the paper's figure beside ours; a run that failed is named, one whose guest crashed after the figures shows them marked", async () => {
    const { table, SCENARIOS } = await import("../scripts/bench/paper.ts");
    const text = table(
      [
        { scenario: "lan", workload: "static", mode: "live", run: 1, ok: true, figures, notes: [] },
        { scenario: "lan", workload: "static", mode: "freeze", run: 1, ok: false, error: "source exited 5 before the migration's done event", notes: [] },
        { scenario: "lan", workload: "diabolical", mode: "live", run: 1, ok: false, error: "the guest reported a failure", figures, notes: [] },
      ],
      [SCENARIOS.lan!],
    );
    const rows = text.split("\n").filter((l) => l.startsWith("| static") || l.startsWith("| diabolical"));
    expect(rows[0]).toContain("| 0.30 s | **");
    expect(rows[0]).toContain("| 1.04 s |"); // the paper's LAN static web figure
    expect(rows[1]).toContain("0 of 1 ok (source exited 5 before the migration's done event)");
    expect(rows[1]).toContain("much worse");
    expect(rows[2]).toContain("0 of 1 ok (the guest reported a failure)");
    expect(rows[2]).toContain("| 0.30 s |");
  });
});
