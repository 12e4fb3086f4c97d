// The paper bench's verdict on a guest that fails after its move (scripts/bench/lib/ram-blame.ts),
// on synthetic RAM checks: a RAM mismatch is QEMU's, identical RAM leaves it ours.
import { describe, expect, test } from "bun:test";
import { blame, blameText } from "../scripts/bench/lib/ram-blame.ts";

const same = { pagesDiffering: 0, firstPages: [], heldMs: 400 };
const lost = { pagesDiffering: 2, firstPages: ["0x1a2000", "0x3f000"], heldMs: 420 };
const oops = "at B: general protection fault, probably for non-canonical address 0xdead00000000012a";

describe("whose fault a failed guest is", () => {
  test("no failure: none, whatever the RAM did", () => {
    expect(blame([], lost)).toBe("none");
    expect(blame([], undefined)).toBe("none");
  });

  test("a failure after guest RAM differed at the switchover is QEMU's; with RAM identical it is ours; without a check, unknown", () => {
    expect(blame([oops], lost)).toBe("qemu");
    expect(blame([oops], same)).toBe("ours");
    expect(blame([oops], undefined)).toBe("unknown");
    expect(blameText("qemu", lost, oops)).toContain("QEMU's: guest RAM differed at the switchover (2 pages, first 0x1a2000, 0x3f000)");
    expect(blameText("ours", same, oops)).toContain("RAM identical at the switchover (ours to explain)");
  });
});
