import { describe, expect, test } from "bun:test";
import { LinkMeter } from "../src/phases/link-meter.ts";

describe("LinkMeter", () => {
  test("measures acknowledged bytes per ms over intervals that began with a backlog", () => {
    const m = new LinkMeter();
    m.observe(0, 0, true);
    m.observe(200, 200_000, true);
    expect(m.bytesPerMs()).toBe(1000);
  });

  test("an idle link says nothing about its rate: the bulk copy's figure stands", () => {
    const m = new LinkMeter(50_000);
    m.observe(0, 0, false);
    m.observe(1000, 1000, false); // the VM wrote 1 KB in a second
    expect(m.bytesPerMs()).toBe(50_000);
  });

  test("smooths: one slow interval moves the rate, it does not replace it", () => {
    const m = new LinkMeter(1000);
    m.observe(0, 0, true);
    m.observe(200, 20_000, true); // 100 bytes/ms once
    expect(m.bytesPerMs()).toBeGreaterThan(500);
    expect(m.bytesPerMs()).toBeLessThan(1000);
  });

  test("intervals under 100 ms are merged into the next", () => {
    const m = new LinkMeter();
    m.observe(0, 0, true);
    m.observe(10, 100_000, true);
    expect(m.bytesPerMs()).toBeUndefined();
    m.observe(100, 100_000, true);
    expect(m.bytesPerMs()).toBe(1000);
  });

  test("with the drain meter: an ACK of bytes sent long before does not read as a fast link", () => {
    // 625 bytes/ms (5 Mbit/s). A record appears after a quiet spell; the ACK of 1.3 MB sent
    // earlier lands within its first 100 ms, while the kernel took bytes for 10 ms of it.
    const m = new LinkMeter(625);
    m.observe(0, 0, true, { busyMs: 0, busyBytes: 0 });
    m.observe(100, 1_310_720, true, { busyMs: 10, busyBytes: 6250 });
    expect(m.bytesPerMs()).toBe(625);
  });

  test("with the drain meter: a busy interval counts, no faster than the kernel took the bytes", () => {
    const m = new LinkMeter(1000);
    m.observe(0, 0, true, { busyMs: 0, busyBytes: 0 });
    // ACKs say 3000 bytes/ms, the link drained 700 bytes/ms for 180 of the 200 ms.
    m.observe(200, 600_000, true, { busyMs: 180, busyBytes: 126_000 });
    expect(m.bytesPerMs()).toBeCloseTo(0.3 * 700 + 0.7 * 1000);
  });

  test("with the drain meter: a slow destination (ACKs slower than the link) still reads slow", () => {
    const m = new LinkMeter(10_000);
    m.observe(0, 0, true, { busyMs: 0, busyBytes: 0 });
    m.observe(200, 20_000, true, { busyMs: 200, busyBytes: 2_000_000 });
    expect(m.bytesPerMs()).toBeCloseTo(0.3 * 100 + 0.7 * 10_000);
  });
});
