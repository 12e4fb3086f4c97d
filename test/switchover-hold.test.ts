import { describe, expect, test } from "bun:test";
import type { HandoffInputs } from "../src/phases/convergence.ts";
import { SwitchoverHold } from "../src/phases/switchover-hold.ts";

// A 5 Mbit/s link (625 bytes/ms), nothing queued: only what the serve holds decides.
const idle = (over: Partial<HandoffInputs> = {}): HandoffInputs => ({
  queuedBytes: 0,
  unackedWireBytes: 0,
  compressionRatio: 1,
  linkBytesPerMs: 625,
  rttMs: 100,
  hashBytes: 0,
  hashBytesPerMs: 200_000,
  controlMs: 2,
  destSyncMs: 1,
  ...over,
});

describe("the switchover hold", () => {
  test("holds the pause while the held writes would not cross within the budget, and lets it go once they would", () => {
    const h = new SwitchoverHold({ budgetMs: 50 });
    // 4 MiB held on 5 Mbit/s: 6.7 s to cross.
    expect(h.look(0, idle(), 4 * 1024 * 1024).hold).toBe(true);
    expect(h.look(50, idle(), 4 * 1024 * 1024).hold).toBe(true);
    // The writer's read phase: nothing held, for 300 ms before the pause is let go.
    expect(h.look(100, idle(), 0).hold).toBe(true);
    expect(h.look(300, idle(), 0).hold).toBe(true);
    const fit = h.look(400, idle(), 0);
    expect(fit.hold).toBe(false);
    expect(fit.estimate.workMs).toBeLessThanOrEqual(50);
    expect(h.heldMs).toBe(400);
  });

  test("a writer that fits for an instant between requests is not let go: it must fit for 300 ms in a row", () => {
    const h = new SwitchoverHold({ budgetMs: 50 });
    expect(h.look(0, idle(), 4 << 20).hold).toBe(true);
    expect(h.look(100, idle(), 0).hold).toBe(true);
    expect(h.look(200, idle(), 4 << 20).hold).toBe(true); // refilled
    expect(h.look(300, idle(), 0).hold).toBe(true);
    expect(h.look(500, idle(), 0).hold).toBe(true);
    expect(h.look(600, idle(), 0).hold).toBe(false);
  });

  test("never held, a look that fits lets the pause come at once", () => {
    expect(new SwitchoverHold({ budgetMs: 50 }).look(0, idle(), 0).hold).toBe(false);
  });

  test("counts the held bytes at the compression ratio seen, like the queue", () => {
    const h = new SwitchoverHold({ budgetMs: 50 });
    // 64 KiB held is 105 ms raw on 625 bytes/ms, 21 ms at a 0.2 ratio.
    expect(h.look(0, idle({ compressionRatio: 0.2 }), 64 * 1024).hold).toBe(false);
    expect(new SwitchoverHold({ budgetMs: 50 }).look(0, idle(), 64 * 1024).hold).toBe(true);
  });

  test("a queue already too long is held back too: the held bytes come on top of it", () => {
    const h = new SwitchoverHold({ budgetMs: 50 });
    expect(h.look(0, idle({ queuedBytes: 20_000 }), 20_000).hold).toBe(true);
    expect(new SwitchoverHold({ budgetMs: 50 }).look(0, idle({ queuedBytes: 20_000 }), 0).hold).toBe(false);
  });

  test("a writer that never leaves its queue full is held for at most maxHoldMs in all, then never again", () => {
    const h = new SwitchoverHold({ budgetMs: 50, maxHoldMs: 1000 });
    let gaveUp: string | undefined;
    let t = 0;
    for (; t <= 2000 && !gaveUp; t += 100) {
      const look = h.look(t, idle(), 8 * 1024 * 1024);
      if (look.gaveUp) gaveUp = look.gaveUp;
      else expect(look.hold).toBe(true);
    }
    expect(t).toBe(1100); // the look at 1000 ms of holding gave up
    expect(gaveUp).toMatch(/did not fit the downtime budget for 1 s/);
    expect(h.look(t, idle(), 8 * 1024 * 1024).hold).toBe(false);
  });

  test("separate episodes of holding add up against the maximum", () => {
    const h = new SwitchoverHold({ budgetMs: 50, maxHoldMs: 5000 });
    h.look(0, idle(), 1 << 22);
    h.look(200, idle(), 1 << 22);
    h.look(300, idle(), 0);
    h.look(450, idle(), 0);
    expect(h.look(600, idle(), 0).hold).toBe(false); // quiet for 300 ms: held until this look, 600 ms
    expect(h.heldMs).toBe(600);
    const separate = new SwitchoverHold({ budgetMs: 50, maxHoldMs: 800 });
    separate.look(0, idle(), 1 << 22);
    separate.look(200, idle(), 1 << 22);
    separate.look(300, idle(), 0);
    separate.look(450, idle(), 0);
    expect(separate.look(600, idle(), 0).hold).toBe(false); // 600 ms held
    separate.look(1000, idle(), 1 << 22);
    expect(separate.look(1150, idle(), 1 << 22).hold).toBe(true); // 750 ms
    expect(separate.look(1250, idle(), 1 << 22).gaveUp).toBeDefined(); // 850 ms
  });

  test("holds no longer than the downtime at stake, and at least 5 s", () => {
    // 8 MiB on 625 bytes/ms: 13.4 s at stake.
    const h = new SwitchoverHold({ budgetMs: 50 });
    let t = 0;
    while (!h.look(t, idle(), 8 * 1024 * 1024).gaveUp) t += 500;
    expect(t).toBeGreaterThanOrEqual(13_000);
    expect(t).toBeLessThan(14_500);
    // 64 KiB: 105 ms at stake, held the 5 s floor.
    const small = new SwitchoverHold({ budgetMs: 50 });
    t = 0;
    while (!small.look(t, idle(), 64 * 1024).gaveUp) t += 500;
    expect(t).toBe(5000);
  });

  test("past the downtime at stake, the pause goes at a moment no worse than the best the writer offered, not on the look that reached the limit", () => {
    const h = new SwitchoverHold({ budgetMs: 50 });
    // The writer's queue swings between 8 and 2 MiB (13.4 s and 3.4 s at stake).
    const held = (t: number) => ((t / 500) % 4 === 3 ? 2 : 8) * 1024 * 1024;
    let t = 0;
    let look = h.look(t, idle(), held(t));
    while (!look.gaveUp) look = h.look((t += 500), idle(), held(t));
    expect(t).toBeGreaterThanOrEqual(13_000);
    expect(held(t)).toBe(2 * 1024 * 1024);
    expect(look.gaveUp).toMatch(/the least seen \d+ ms/);
  });

  test("a best moment that never comes again is waited for no longer than maxHoldMs", () => {
    // A fast link (100 MB/s) and a 5 ms budget: little at stake, so the 5 s floor is the soft limit.
    const fast = (over: Partial<HandoffInputs> = {}) => idle({ linkBytesPerMs: 100_000, ...over });
    const h = new SwitchoverHold({ budgetMs: 5, maxHoldMs: 8000 });
    expect(h.look(0, fast(), 1 << 20).hold).toBe(true); // the best: 1 MiB
    let t = 0;
    let look = h.look(t, fast(), 32 << 20);
    while (!look.gaveUp) {
      expect(look.hold).toBe(true);
      look = h.look((t += 500), fast(), 32 << 20);
    }
    expect(t).toBe(8000);
  });
});
