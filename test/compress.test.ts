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
});
