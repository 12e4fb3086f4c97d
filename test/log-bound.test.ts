// The delta log's bound against the space free where it lives, with a real file system.
import { afterAll, describe, expect, test } from "bun:test";
import { statfsSync } from "node:fs";
import { join } from "node:path";
import { logBound } from "../src/disk/recording/log-bound.ts";
import { sparseFile, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir();
afterAll(() => dir.remove());

function free(): number {
  const fs = statfsSync(dir.path);
  return fs.bavail * fs.bsize;
}

describe("logBound", () => {
  test("a thin image that could still grow: its growth is set aside, and the log gets half of the rest", async () => {
    const image = join(dir.path, "small.img");
    await sparseFile(image, 64 * 1024 * 1024);
    const b = logBound({ logDir: dir.path, images: [image] });
    const expected = 0.5 * (free() - 64 * 1024 * 1024);
    expect(Math.abs(b.bytes - expected)).toBeLessThan(64 * 1024 * 1024); // others write beside us
    expect(b.why).toContain("kept for the image to grow");
  });

  test("an overcommitted thin image (it could grow past what is free) still leaves the log a quarter of the free space", async () => {
    const image = join(dir.path, "huge.img");
    await sparseFile(image, 4 * free() + 2 ** 40);
    const b = logBound({ logDir: dir.path, images: [image] });
    expect(b.bytes).toBeGreaterThan(0.2 * free());
    expect(b.bytes).toBeLessThan(0.3 * free());
    expect(b.why).toContain("more than is free");
  });

  test("--max-log-size lowers the bound, never raises it", async () => {
    const image = join(dir.path, "small.img");
    expect(logBound({ logDir: dir.path, images: [image], requested: 1024 }).bytes).toBe(1024);
    expect(logBound({ logDir: dir.path, images: [image], requested: 100 * free() }).bytes).toBeLessThan(free());
  });
});
