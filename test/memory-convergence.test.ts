// When QEMU's pre-copy of memory is ended (src/hypervisor/memory-convergence.ts), on
// synthetic progress: QEMU's own answers, in the shape query-migrate gives them.
import { describe, expect, test } from "bun:test";
import { endPrecopyLimit, MAX_PRECOPY_ROUNDS, precopyProgress } from "../src/hypervisor/memory-convergence.ts";

// 5 Mbit/s (the paper's WAN): 625 bytes per ms.
const wan = (rounds: number, remainingMiB: number) => ({ rounds, remainingBytes: remainingMiB * 1048576, bytesPerMs: 625, downtimeLimitMs: 300 });

describe("ending a pre-copy that does not converge", () => {
  test("before its rounds are spent: nothing, however much is left", () => {
    for (let r = 0; r < MAX_PRECOPY_ROUNDS; r++) expect(endPrecopyLimit(wan(r, 40))).toBeUndefined();
  });

  test("rounds spent, 12 MiB dirty on a 5 Mbit/s link: the limit covers sending it, with margin (about 30 s)", () => {
    const limit = endPrecopyLimit(wan(MAX_PRECOPY_ROUNDS, 12))!;
    expect(limit).toBeGreaterThan((12 * 1048576) / 625);
    expect(limit).toBeLessThan(2 * ((12 * 1048576) / 625));
  });

  test("rounds spent but what is left fits the limit already: nothing (QEMU stops by itself)", () => {
    expect(endPrecopyLimit({ rounds: 20, remainingBytes: 100_000, bytesPerMs: 625, downtimeLimitMs: 300 })).toBeUndefined();
  });

  test("no measured rate yet: nothing (no limit made up from a zero)", () => {
    expect(endPrecopyLimit({ rounds: 20, remainingBytes: 1 << 30, bytesPerMs: 0, downtimeLimitMs: 300 })).toBeUndefined();
  });

  test("a limit raised once is not raised again while what is left still fits it", () => {
    const limit = endPrecopyLimit(wan(6, 12))!;
    expect(endPrecopyLimit({ ...wan(7, 12), downtimeLimitMs: limit })).toBeUndefined();
    expect(endPrecopyLimit({ ...wan(7, 40), downtimeLimitMs: limit })).toBeGreaterThan(limit); // more dirtied meanwhile: raised to match
  });

  test("never above QEMU's own bound (2000 s)", () => {
    expect(endPrecopyLimit({ rounds: 9, remainingBytes: 1e12, bytesPerMs: 1, downtimeLimitMs: 300 })).toBe(2_000_000);
  });

  test("read from query-migrate: rounds are dirty-sync-count, the rate is mbps; before the ram member, nothing", () => {
    expect(precopyProgress({ ram: { "dirty-sync-count": 6, remaining: 4096, mbps: 5 } }, 300)).toEqual({ rounds: 6, remainingBytes: 4096, bytesPerMs: 625, downtimeLimitMs: 300 });
    expect(precopyProgress({}, 300)).toBeUndefined();
  });
});
