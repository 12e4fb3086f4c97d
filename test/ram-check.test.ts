// The real-VM tests' verdict on whose fault a failure is (helpers/ram-check.ts), on
// synthetic runs: a RAM loss is QEMU's and earns one more run; wanmig's own checks and
// failures with equal RAM fail at once.
import { afterAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Attempt, differingPages, ours, retryOnQemuRamLoss } from "./helpers/ram-check.ts";
import { tempDir } from "./helpers/serve-process.ts";

const dir = tempDir("wanmig-ramcheck-");
afterAll(() => dir.remove());
const lost = (at: Attempt) => {
  at.ram = { pagesDiffering: 1, firstPages: ["0x7835000"], heldMs: 1 };
};
const equal = (at: Attempt) => {
  at.ram = { pagesDiffering: 0, firstPages: [], heldMs: 1 };
};

/** Runs `runs[i]` as attempt i+1; returns how many ran and what was thrown. */
async function play(runs: ((at: Attempt) => void | Promise<void>)[]): Promise<{ attempts: number; closed: number; error?: string }> {
  let attempts = 0;
  let closed = 0;
  const warn = console.warn;
  console.warn = () => undefined;
  try {
    await retryOnQemuRamLoss("synthetic", (n) => join(dir.path, `run${n}`), async (at) => {
      at.defer(() => closed++);
      await runs[attempts++]!(at);
    });
    return { attempts, closed };
  } catch (err) {
    return { attempts, closed, error: (err as Error).message };
  } finally {
    console.warn = warn;
  }
}

describe("retryOnQemuRamLoss", () => {
  test("equal RAM and a pass: one run", async () => {
    expect(await play([equal])).toEqual({ attempts: 1, closed: 1 });
  });

  test("a guest failure after a RAM loss is QEMU's: run once more, and the second run decides", async () => {
    const oops = (at: Attempt) => {
      lost(at);
      throw new Error("Oops: general protection fault");
    };
    expect(await play([oops, equal])).toEqual({ attempts: 2, closed: 2 });
    const second = await play([oops, (at) => { equal(at); throw new Error("VERIFY-FAIL i=3"); }]);
    expect(second.attempts).toBe(2);
    expect(second.error).toBe("VERIFY-FAIL i=3");
  });

  test("a RAM loss in a run that passed is retried too (its guest's later writes cannot be trusted)", async () => {
    expect(await play([lost, equal])).toEqual({ attempts: 2, closed: 2 });
  });

  test("a RAM loss twice in a row fails, naming QEMU's loss", async () => {
    const r = await play([lost, lost]);
    expect(r.attempts).toBe(2);
    expect(r.error).toContain("twice in a row");
    expect(r.error).toContain("0x7835000");
  });

  test("wanmig's own check fails at once, even in a run whose RAM differed", async () => {
    const r = await play([
      async (at) => {
        lost(at);
        await ours(() => expect(["block 7"]).toEqual([]));
      },
      equal,
    ]);
    expect(r.attempts).toBe(1);
    expect(r.closed).toBe(1);
    expect(r.error).toContain("wanmig's check failed");
  });

  test("any failure with equal RAM fails at once", async () => {
    const r = await play([(at) => { equal(at); throw new Error("no GUEST W at B"); }, equal]);
    expect(r).toEqual({ attempts: 1, closed: 1, error: "no GUEST W at B" });
  });

  test("a failure before the RAM check is not put down to QEMU", async () => {
    const r = await play([() => { throw new Error("dest never listened"); }, equal]);
    expect(r).toEqual({ attempts: 1, closed: 1, error: "dest never listened" });
  });
});

describe("differingPages", () => {
  test("finds the one byte that differs, by page, and nothing in equal dumps", () => {
    const size = 3 << 20;
    const a = Buffer.alloc(size, 7);
    const b = Buffer.from(a);
    b[0x7835000 % size] = 8; // offset 0 of a page, as QEMU's lost counter was
    b[size - 1] = 9; // the last byte of the last page
    writeFileSync(join(dir.path, "a"), a);
    writeFileSync(join(dir.path, "b"), b);
    expect(differingPages(join(dir.path, "a"), join(dir.path, "b"), size)).toEqual([0x7835000 % size, size - 4096]);
    expect(differingPages(join(dir.path, "a"), join(dir.path, "a"), size)).toEqual([]);
  });
});
