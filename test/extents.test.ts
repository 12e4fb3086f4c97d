// Where a file's data is, as the bulk copy and the digests ask it: holes are skipped, and
// any doubt is answered "data".
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, openSync } from "node:fs";
import { join } from "node:path";
import { HoleFinder, nextData } from "../src/disk/image/extents.ts";
import { overwrite, sparseFile, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir();
afterAll(() => dir.remove());
const MiB = 1024 * 1024;

describe("nextData", () => {
  test("a sparse file: the data where it was written, the holes around it, nothing past the last data", async () => {
    const path = join(dir.path, "thin");
    await sparseFile(path, 64 * MiB);
    overwrite(path, 10 * MiB, new Uint8Array(MiB).fill(7));
    const fd = openSync(path, "r");
    try {
      const holes = new HoleFinder(fd, 64 * MiB);
      expect(nextData(fd, 0, 64 * MiB)).toBe(10 * MiB);
      expect(holes.isHole(0, 10 * MiB)).toBe(true);
      expect(holes.isHole(9 * MiB, 2 * MiB)).toBe(false);
      expect(holes.isHole(11 * MiB, 53 * MiB)).toBe(true);
      expect(holes.isHole(0, 11 * MiB)).toBe(false); // asked again, backwards: not taken from the last answer
      expect(nextData(fd, 11 * MiB, 64 * MiB)).toBe(64 * MiB);
    } finally {
      closeSync(fd);
    }
  });

  test("a write still in the page cache is data, not a hole", async () => {
    const path = join(dir.path, "cached");
    await sparseFile(path, 16 * MiB);
    const fd = openSync(path, "r");
    try {
      overwrite(path, 4 * MiB, new Uint8Array(4096).fill(1)); // no sync
      expect(new HoleFinder(fd, 16 * MiB).isHole(4 * MiB, 4096)).toBe(false);
    } finally {
      closeSync(fd);
    }
  });

  test("an error other than 'no data' is taken as data (skipping data would be corruption)", () => {
    expect(nextData(987654, 0, MiB)).toBe(0); // EBADF
    expect(new HoleFinder(987654, MiB).isHole(0, MiB)).toBe(false);
  });
});
