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
});
