// A whole job's progress (status --group): counts, bytes left, an ETA at the budget (or at
// what the moves measured), and a rising ETA that says why. Synthetic inputs.
import { describe, expect, test } from "bun:test";
import { etaRise, type MoveEntry, renderSummary, summarize } from "../src/report/job-progress.ts";

const MiB = 1 << 20;
const budget = 25e6; // 200 Mbit/s

const job = (over: Partial<Record<string, Partial<MoveEntry>>> = {}): MoveEntry[] =>
  [
    { vm: "vm1", state: "done", bytesLeft: 0, budget },
    { vm: "vm2", state: "sending", bytesLeft: 100 * MiB, rate: 12.5e6, budget },
    { vm: "vm3", state: "sending", bytesLeft: 50 * MiB, rate: 12.5e6, budget },
    { vm: "vm4", state: "waiting", bytesLeft: 256 * MiB, budget },
  ].map((m) => ({ ...m, ...over[m.vm] }) as MoveEntry);

describe("a job's progress", () => {
  test("counts each state; the bytes left are those of the moves under way and waiting; the ETA is at the budget", () => {
    const s = summarize([...job(), { vm: "vm5", state: "failed", bytesLeft: 9 * MiB, error: "x" }, { vm: "vm6", state: "gone", bytesLeft: 7 * MiB }]);
    expect(s).toMatchObject({ done: 1, underWay: 2, waiting: 1, failed: 2, bytesLeft: 406 * MiB, rate: budget });
    expect(s.etaS).toBeCloseTo((406 * MiB) / budget, 6);
    expect(renderSummary("evacuate", s)).toBe("group evacuate: 1 done, 2 under way, 1 waiting, 2 failed; 406.0 MiB left; ETA 17 s at 200.0 Mbit/s");
  });

  test("without a budget the ETA is at what the moves under way measured; with nothing sending it is unknown", () => {
    const noBudget = job().map(({ budget: _, ...m }) => m);
    expect(summarize(noBudget).rate).toBe(25e6);
    const s = summarize(noBudget.map((m) => ({ ...m, state: m.state === "sending" ? "waiting" : m.state, rate: undefined })));
    expect(s.etaS).toBeUndefined();
    expect(renderSummary("g", s)).toContain("ETA unknown (nothing sending yet)");
  });

  test("an ETA that falls as time passes says nothing; one that rises names the new bytes or the slower rate", () => {
    const before = summarize(job());
    const later = summarize(job({ vm2: { bytesLeft: 75 * MiB } }));
    expect(etaRise(before, later, 1)).toBeUndefined();
    const writes = summarize(job({ vm2: { bytesLeft: 160 * MiB } }));
    expect(etaRise(before, writes, 1)).toMatch(/^ETA up \d+ s: 60\.0 MiB more to send \(the VMs' writes, or a move started again\)$/);
    const slower = summarize(job().map(({ budget: _, ...m }) => ({ ...m, rate: m.state === "sending" ? 5e6 : undefined })));
    const faster = summarize(job().map(({ budget: _, ...m }) => m));
    expect(etaRise(faster, slower, 1)).toContain("the rate fell from 200.0 Mbit/s to 80.0 Mbit/s");
    // The same bytes left a second later: the ETA stood still, which is a rise of one second.
    expect(etaRise(before, before, 0.5)).toBeUndefined();
    expect(etaRise(before, before, 3)).toContain("fewer than the rate promised");
  });
});
