import { describe, expect, test } from "bun:test";
import { xbzrlePlan } from "../src/hypervisor/memory-xbzrle.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

describe("XBZRLE for the memory's last pass", () => {
  test("off on a fast link, and when the link was never measured", () => {
    expect(xbzrlePlan({ bytesPerSec: 125e6 }, { ramBytes: GiB })).toBeUndefined();
    expect(xbzrlePlan({ bytesPerSec: 50e6 / 8 }, { ramBytes: GiB })).toBeUndefined();
    expect(xbzrlePlan({}, { ramBytes: GiB })).toBeUndefined();
  });

  test("on a 5 Mbit/s WAN, the cache holds ten seconds of the guest's dirtying, as a power of two", () => {
    const p = xbzrlePlan({ bytesPerSec: 625_000 }, { ramBytes: 4 * GiB, dirtyBytesPerSec: 12 * MiB })!;
    expect(p.cacheBytes).toBe(128 * MiB); // 120 MiB rounded up
    expect(p.why).toMatch(/5\.0 Mbit\/s.*12\.0 MiB\/s.*128 MiB cache/);
  });

  test("the cache stays within 64 MiB and half the guest's RAM", () => {
    expect(xbzrlePlan({ bytesPerSec: 625_000 }, { ramBytes: 512 * MiB, dirtyBytesPerSec: 100 * MiB })!.cacheBytes).toBe(256 * MiB);
    expect(xbzrlePlan({ bytesPerSec: 625_000 }, { ramBytes: 8 * GiB, dirtyBytesPerSec: 0 })!.cacheBytes).toBe(64 * MiB);
    // A guest smaller than the floor's double still gets QEMU's default.
    expect(xbzrlePlan({ bytesPerSec: 625_000 }, { ramBytes: 96 * MiB })!.cacheBytes).toBe(64 * MiB);
  });

  test("without a dirty rate, a quarter of the RAM", () => {
    expect(xbzrlePlan({ bytesPerSec: 625_000 }, { ramBytes: 2 * GiB })!.cacheBytes).toBe(512 * MiB);
  });
});
