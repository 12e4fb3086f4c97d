// The long-window stream of the bulk copy on slow links (zstd-stream.ts, compress.ts):
// pieces decode in order to what was sent, a repeat far back costs next to nothing, level
// changes keep the stream decodable, and a stream out of step or asking for more memory
// than the window is refused with a ProtocolError.
import { describe, expect, test } from "bun:test";
import zlib from "node:zlib";
import { Compressor } from "../src/net/compress.ts";
import { ProtocolError } from "../src/net/errors.ts";
import { StreamDeflater, StreamInflater } from "../src/net/zstd-stream.ts";

const MiB = 1024 * 1024;
/** Incompressible on its own (random), so only a match with an earlier piece can shrink it. */
const randomUnit = (n: number) => {
  const b = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) crypto.getRandomValues(b.subarray(at, at + 65536));
  return b;
};

describe("the stream's two ends", () => {
  test("a unit repeated 20 MiB later (a library's second copy) crosses in a few KiB; every piece decodes to its unit", async () => {
    const d = new StreamDeflater();
    const i = new StreamInflater();
    const lib = randomUnit(4 * MiB);
    const units = [lib, ...Array.from({ length: 5 }, () => randomUnit(4 * MiB)), lib];
    const sizes: number[] = [];
    for (const u of units) {
      const piece = await d.piece(u, 3);
      sizes.push(piece.length);
      expect(Buffer.from(await i.piece(piece, u.length)).equals(u)).toBe(true);
    }
    expect(sizes[0]).toBeGreaterThan(4 * MiB * 0.99); // random: no gain alone
    expect(sizes.at(-1)).toBeLessThan(64 * 1024); // 24 MiB back, inside the 32 MiB window
    // A frame of its own cannot see the first copy.
    expect(Bun.zstdCompressSync(lib, { level: 19 }).length).toBeGreaterThan(4 * MiB * 0.99);
    d.close();
    i.close();
  });

  test("a level change ends one frame and starts another, in the same piece: still decodable", async () => {
    const d = new StreamDeflater();
    const i = new StreamInflater();
    const text = new TextEncoder().encode("a disk block of text, ".repeat(50_000));
    for (const level of [1, 1, 9, 3, 19, 19]) {
      const piece = await d.piece(text, level);
      expect(piece.length).toBeLessThan(text.length / 10);
      expect(Buffer.from(await i.piece(piece, text.length)).equals(Buffer.from(text))).toBe(true);
    }
  });

  test("a piece skipped (a stream out of step) and a wrong length are protocol errors", async () => {
    const d = new StreamDeflater();
    const text = new TextEncoder().encode("x".repeat(100_000) + "y".repeat(100_000));
    const pieces = [await d.piece(text, 3), await d.piece(text, 3), await d.piece(text, 3)];
    const skipped = new StreamInflater();
    await expect(skipped.piece(pieces[1]!, text.length)).rejects.toBeInstanceOf(ProtocolError);
    const long = new StreamInflater();
    await expect(long.piece(pieces[0]!, text.length + 1)).rejects.toThrow("decompressed to 200000 bytes, not 200001");
    const short = new StreamInflater();
    await expect(short.piece(pieces[0]!, text.length - 1)).rejects.toThrow("expands past the length its message gives");
  });

  test("a stream that asks for a 128 MiB window (memory a hostile source would make us spend) is refused", async () => {
    const z = zlib.createZstdCompress({ params: { [zlib.constants.ZSTD_c_windowLog]: 27 } });
    const out: Buffer[] = [];
    z.on("data", (b: Buffer) => out.push(b));
    z.write(new Uint8Array(100_000));
    await new Promise<void>((r) => z.flush(zlib.constants.ZSTD_e_flush, () => r()));
    await expect(new StreamInflater().piece(Buffer.concat(out), 100_000)).rejects.toThrow("does not decompress");
  });
});

describe("Compressor: which units go as stream pieces", () => {
  const unit = new TextEncoder().encode("some text of a disk, ".repeat(10_000));
  test("bulk runs over a slow link (5 Mbit/s), at fixed levels and in auto mode", async () => {
    for (const setting of [1, 19, "auto"] as const) {
      const z = new Compressor(setting, { linkBytesPerMs: () => 625, waitedMs: 0 }, 100);
      expect((await z.compress(unit, true)).streamed).toBe(true);
      z.close();
    }
  });
  test("not over a fast link (1 Gbit/s), not before the link is measured, not deltas, not uncompressed", async () => {
    expect((await new Compressor(1, { linkBytesPerMs: () => 125_000, waitedMs: 0 }).compress(unit, true)).streamed).toBeUndefined();
    expect((await new Compressor(1, { linkBytesPerMs: () => undefined, waitedMs: 0 }).compress(unit, true)).streamed).toBeUndefined();
    expect((await new Compressor(1, { linkBytesPerMs: () => 625, waitedMs: 0 }).compress(unit, false)).streamed).toBeUndefined();
    expect((await new Compressor(0, { linkBytesPerMs: () => 625, waitedMs: 0 }).compress(unit, true)).streamed).toBeUndefined();
  });
});

describe("a broken stream", () => {
  test("a piece that says 100 bytes and expands to 64 MiB (a bomb) is stopped, not held in memory", async () => {
    const d = new StreamDeflater();
    const bomb = await d.piece(new Uint8Array(64 * 1024 * 1024), 19);
    expect(bomb.length).toBeLessThan(64 * 1024);
    const i = new StreamInflater();
    const rss0 = process.memoryUsage().rss;
    await expect(i.piece(bomb, 100)).rejects.toThrow("expands past the length its message gives");
    expect(process.memoryUsage().rss - rss0).toBeLessThan(48 * 1024 * 1024);
  });

  test("garbage, then another piece: each a ProtocolError at once, neither hangs", async () => {
    const i = new StreamInflater();
    const garbage = crypto.getRandomValues(new Uint8Array(70_000));
    await expect(i.piece(garbage, 100)).rejects.toBeInstanceOf(ProtocolError);
    await Bun.sleep(20);
    await expect(i.piece(garbage, 100)).rejects.toBeInstanceOf(ProtocolError);
    i.close();
  });
});
