// The compressor of one stream (compress.ts): what it sends decodes to what it was given,
// and a large unit does not hold the event loop (the link must be fed while it compresses).
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { Compressor, decompress } from "../src/net/compress.ts";

const link = { linkBytesPerMs: () => 625, waitedMs: 0 }; // a 5 Mbit/s link, known slow
/** Compressible but not trivially: this test's own source, repeated with a counter. */
function textUnit(bytes: number): Uint8Array {
  const src = readFileSync(import.meta.path, "utf8");
  let s = "";
  for (let i = 0; s.length < bytes; i++) s += `${i} ${src}`;
  return new TextEncoder().encode(s.slice(0, bytes));
}

describe("Compressor", () => {
  test("a 4 MiB unit at level 19 compresses off the event loop: a timer set before it fires before it is done", async () => {
    const z = new Compressor(19, link);
    const order: string[] = [];
    setTimeout(() => order.push("timer"), 0);
    const out = await z.compress(textUnit(4 * 1024 * 1024)).then((o) => (order.push("compressed"), o));
    expect(order).toEqual(["timer", "compressed"]);
    expect(out.compressed).toBe(true);
  });

  test("what it sends decodes to the unit, at fixed levels and in auto mode over many units", async () => {
    for (const setting of [0, 1, 19, "auto"] as const) {
      const z = new Compressor(setting, link, 100);
      for (const size of [100, 4096, 65536, 1024 * 1024]) {
        const unit = textUnit(size);
        const out = await z.compress(unit);
        expect(out.compressed ? decompress(out.data, size) : out.data).toEqual(unit);
      }
    }
  });

  test("random data goes as it is (no gain of 10 %)", async () => {
    const unit = crypto.getRandomValues(new Uint8Array(65536));
    const out = await new Compressor(3, link).compress(unit);
    expect(out.compressed).toBe(false);
    expect(out.data).toEqual(unit);
  });

  test("auto, on a link measured slow that the sender does not wait for (TCP's slow start over a long round trip): probes do not hold the units back", async () => {
    // Measured at 8 Mbit/s early on; the sender never waited (waitedMs stays 0). Before,
    // every unit waited for probes of each level that fit in that slow link's time. Each
    // compression is made to take 300 ms here, so a unit held back by probes shows.
    const slowStart = { linkBytesPerMs: () => 1000, waitedMs: 0 };
    const z = new Compressor("auto", slowStart, 100);
    const unit = new Uint8Array(4 * 1024 * 1024);
    for (let i = 0; i < unit.length; i += 65536) crypto.getRandomValues(unit.subarray(i, i + 65536));
    const real = Bun.zstdCompress;
    let calls = 0;
    (Bun as { zstdCompress: unknown }).zstdCompress = (data: Uint8Array, opts: { level: number }) => {
      calls++;
      return Bun.sleep(300).then(() => real(data, opts));
    };
    try {
      for (let i = 0; i < 6; i++) {
        const t0 = performance.now();
        await z.compress(unit, false);
        // Its own compression at most (300 ms), never its probes too.
        expect(performance.now() - t0).toBeLessThan(550);
      }
      expect(calls).toBeGreaterThanOrEqual(2); // the first unit at level 1, and probes beside the units
    } finally {
      (Bun as { zstdCompress: unknown }).zstdCompress = real;
    }
  });
});

describe("Compressor probes (auto)", () => {
  test("a unit that waited for the link probes other levels before the next only while the link still has bytes queued; the rest beside the sending", async () => {
    const random = new Uint8Array(1024 * 1024).map(() => (Math.random() * 256) | 0);
    const probesAfterSecondUnit = async (backlog: boolean) => {
      const link = { linkBytesPerMs: () => 8000, waitedMs: 0, hasBacklog: () => backlog }; // slow start reads as a slow link
      const z = new Compressor("auto", link, 100);
      let noted = 0; // probes: notes of a unit not sent (sent() notes the unit sent through note() too)
      const policy = (z as unknown as { policy: { note: (s: unknown) => void; sent: (u: unknown) => void } }).policy;
      const note = policy.note.bind(policy);
      const sent = policy.sent.bind(policy);
      policy.note = (s) => (noted++, note(s));
      policy.sent = (u) => (sent(u), noted--);
      await z.compress(random, true);
      await (z as unknown as { probing?: Promise<void> }).probing; // the first unit's probes, beside its sending
      noted = 0;
      link.waitedMs = 500; // it waited for the link
      await z.compress(random, true);
      const inline = noted;
      await (z as unknown as { probing?: Promise<void> }).probing;
      return { inline, all: noted };
    };
    const queued = await probesAfterSecondUnit(true);
    expect(queued.inline).toBeGreaterThan(0);
    const drained = await probesAfterSecondUnit(false);
    expect(drained.inline).toBe(0); // the link had nothing queued: the unit went out at once
    expect(drained.all).toBeGreaterThan(0); // and the levels were probed beside it
  });
});
