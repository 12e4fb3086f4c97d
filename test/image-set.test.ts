// A VM's disks as one space (image-set.ts): what the migration reads, writes and skips on a
// set of files must be what it would on their concatenation, across every boundary.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ImageSet, openImage, placeDisks } from "../src/disk/image/image-set.ts";
import { FileBackend } from "../src/disk/image/file-backend.ts";
import { RegionDigests } from "../src/disk/image/region-digest.ts";
import { ImageStateFile } from "../src/disk/image/image-state.ts";
import { overwrite, sparseFile, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir();
afterAll(() => dir.remove());
const MiB = 1024 * 1024;
let n = 0;

/** Two sparse disks of odd sizes (the boundary falls inside a 64 KiB block and a 4 KiB page). */
async function twoDisks(a = 3 * MiB + 12_288 + 512, b = 2 * MiB + 4096) {
  const id = n++;
  const paths = [join(dir.path, `a${id}.img`), join(dir.path, `b${id}.img`)];
  await sparseFile(paths[0]!, a);
  await sparseFile(paths[1]!, b);
  return { paths, a, b };
}

const pattern = (len: number, seed: number) => Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff);

describe("ImageSet", () => {
  test("one image opens as itself: no layer on the one-disk path", async () => {
    const { paths } = await twoDisks();
    const one = openImage(paths[0]!, false);
    expect(one).toBeInstanceOf(FileBackend);
    one.close();
    const set = openImage(paths, false);
    expect(set).toBeInstanceOf(ImageSet);
    set.close();
  });

  test("reads and writes across the boundary land in each file where the concatenation says", async () => {
    const { paths, a, b } = await twoDisks();
    const set = openImage(paths, false);
    expect(set.size).toBe(a + b);
    const data = pattern(300_000, 5);
    const at = a - 100_000; // 100 000 bytes on disk0, the rest on disk1
    set.write(at, data, false);
    // Written in pieces (as the NBD layer hands a write), across the boundary too.
    set.write(a - 3, [pattern(2, 1), pattern(5, 2)], false);
    await set.flush();
    const back = new Uint8Array(data.length);
    set.read(at, back);
    const expected = data.slice();
    expected.set(pattern(2, 1), 100_000 - 3);
    expected.set(pattern(5, 2), 100_000 - 1);
    expect(Buffer.from(back).equals(Buffer.from(expected))).toBe(true);
    const fileA = readFileSync(paths[0]!);
    const fileB = readFileSync(paths[1]!);
    expect(fileA.length).toBe(a);
    expect(fileB.length).toBe(b);
    expect(Buffer.concat([fileA, fileB]).subarray(at, at + data.length).equals(Buffer.from(expected))).toBe(true);
    // Zeroing across the boundary, and past the end refused.
    set.zero(a - 4096, 8192, false, true);
    const z = new Uint8Array(8192);
    set.read(a - 4096, z);
    expect(z.every((x) => x === 0)).toBe(true);
    expect(() => set.read(a + b - 10, new Uint8Array(11))).toThrow("outside the VM's disks");
    set.close();
  });

  test("holes and extents: runs merge across the boundary, data on either side is found", async () => {
    const { paths, a } = await twoDisks(4 * MiB, 4 * MiB);
    overwrite(paths[1]!, 2 * MiB, new Uint8Array(MiB).fill(9));
    const set = openImage(paths, true);
    const holes = set.holeFinder();
    expect(holes.isHole(0, a + 2 * MiB)).toBe(true); // all of disk0 and the start of disk1
    expect(holes.isHole(a + MiB, 2 * MiB)).toBe(false);
    expect(holes.dataFrom(0)).toBe(a + 2 * MiB);
    expect(set.extents(0, 8 * MiB)).toEqual([
      { length: a + 2 * MiB, hole: true },
      { length: MiB, hole: false },
      { length: MiB, hole: true },
    ]);
    set.close();
  });

  test("the digest of a set is the digest of its concatenation", async () => {
    const { paths, a, b } = await twoDisks();
    overwrite(paths[0]!, a - 5000, pattern(5000, 3));
    overwrite(paths[1]!, 0, pattern(70_000, 4));
    const whole = join(dir.path, "whole.img");
    writeFileSync(whole, Buffer.concat([readFileSync(paths[0]!), readFileSync(paths[1]!)]));
    const d1 = new RegionDigests(a + b);
    d1.refresh(paths, { all: true });
    const d2 = new RegionDigests(a + b);
    d2.refresh(whole, { all: true });
    expect(d1.digest()).toBe(d2.digest());
  });

  test("placeDisks: each disk's offset in the VM's space", () => {
    expect(placeDisks(["a", "b", "c"], [10, 20, 5]).map((d) => [d.index, d.offset, d.size])).toEqual([
      [0, 0, 10],
      [1, 10, 20],
      [2, 30, 5],
    ]);
  });
});

describe("the state of a VM's disks", () => {
  test("written beside every image; a fence on any disk holds for the set; a member alone with the set's recording is refused", async () => {
    const { paths } = await twoDisks();
    const st = new ImageStateFile(paths);
    st.update((s) => (s.fence = { since: "then", reason: "test" }));
    for (const p of paths) expect(ImageStateFile.read(p).fence?.reason).toBe("test");
    // A crash between the two files: disk0's has no fence, disk1's has. The set is fenced.
    const { paths: other } = await twoDisks();
    new ImageStateFile(other[1]!).update((s) => (s.fence = { since: "then", reason: "half-written" }));
    expect(ImageStateFile.read(other).fence?.reason).toBe("half-written");
    // A recording counts in the set's space: never carried to one of its images alone.
    st.update((s) => (s.recording = { id: "r", log: "/nowhere", startedAt: "then", bootId: "b" }));
    expect(ImageStateFile.read(paths).recording?.id).toBe("r");
    expect(() => ImageStateFile.read(paths[1]!)).toThrow("holds a migration's state for the disks");
    expect(() => ImageStateFile.read([paths[1]!, paths[0]!])).toThrow("holds a migration's state");
  });
});
