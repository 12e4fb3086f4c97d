// The image digest kept region by region must equal a fresh hash of the whole image,
// and must change when a region changes and is marked.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { imageDigest, PIECE_SIZE, RegionDigests, REGION_SIZE } from "../src/disk/image/region-digest.ts";
import { overwrite, randomFile, sh, sparseFile, tempDir } from "./helpers/serve-process.ts";
import { isZero } from "../src/util/zero.ts";

const dir = tempDir();
afterAll(() => dir.remove());


describe("region digests", () => {
  test("built from chunks as a bulk copy reads them, then kept current by marking writes", async () => {
    // 5.5 MiB: the last region is short; the middle of the image is all zero.
    const path = join(dir.path, "img");
    const size = 5 * REGION_SIZE + REGION_SIZE / 2;
    await randomFile(path, size);
    overwrite(path, 2 * REGION_SIZE, new Uint8Array(REGION_SIZE));
    const image = readFileSync(path);

    const d = new RegionDigests(size);
    // Chunks of 1.5 MiB: regions straddling two chunks are left for refresh to read.
    for (let at = 0; at < size; at += 1.5 * REGION_SIZE) d.noteData(at, image.subarray(at, at + 1.5 * REGION_SIZE));
    expect(d.staleCount()).toBeGreaterThan(0);
    expect(() => d.digest()).toThrow(/no current hash/);
    d.refresh(path, { all: true });
    expect(d.staleCount()).toBe(0);
    const before = d.digest();
    expect(before).toBe(imageDigest(path, size));

    // One byte changes in region 4 (and the short last region): marked, rehashed, caught.
    overwrite(path, 4 * REGION_SIZE + 7, Uint8Array.of(image[4 * REGION_SIZE + 7]! ^ 1));
    overwrite(path, size - 1, Uint8Array.of(image[size - 1]! ^ 0xff));
    const unmarked = new RegionDigests(size);
    unmarked.noteData(0, image);
    expect(unmarked.digest()).toBe(before); // a write nobody marked is invisible: why every logged write marks
    d.markDirty(4 * REGION_SIZE + 7, 1);
    d.markDirty(size - 1, 1);
    expect(d.staleCount()).toBe(2);
    expect(d.refresh(path)).toBe(2); // only the two marked regions are read
    expect(d.digest()).not.toBe(before);
    expect(d.digest()).toBe(imageDigest(path, size));
  });

  test("after a region's first rehash only its dirty 4 KiB pieces are read again", async () => {
    const path = join(dir.path, "pieces");
    const size = 2 * REGION_SIZE;
    await randomFile(path, size);
    const d = new RegionDigests(size);
    d.refresh(path, { all: true });
    overwrite(path, 100, Uint8Array.of(1, 2, 3));
    d.markDirty(100, 3);
    d.refresh(path); // the whole region is read once; its pieces are kept
    expect(d.digest()).toBe(imageDigest(path, size));
    // Two changes in region 0: only the marked piece is read, so only it shows.
    overwrite(path, 5 * PIECE_SIZE + 9, Uint8Array.of(0xaa));
    overwrite(path, 9 * PIECE_SIZE + 9, Uint8Array.of(0xbb));
    d.markDirty(5 * PIECE_SIZE + 9, 1);
    expect(d.pendingBytes()).toBe(PIECE_SIZE); // what the hand-off would read: the one piece
    d.refresh(path);
    expect(d.digest()).not.toBe(imageDigest(path, size));
    d.markDirty(9 * PIECE_SIZE, PIECE_SIZE);
    d.markDirty(REGION_SIZE + 5, 1); // region 1's first dirtying: it is read whole once
    expect(d.pendingBytes()).toBe(PIECE_SIZE + REGION_SIZE);
    d.refresh(path);
    expect(d.pendingBytes()).toBe(0);
    expect(d.digest()).toBe(imageDigest(path, size));
  });

  test("a range across region boundaries marks every region it touches", () => {
    const d = new RegionDigests(4 * REGION_SIZE);
    d.noteData(0, new Uint8Array(4 * REGION_SIZE));
    d.markDirty(REGION_SIZE - 1, REGION_SIZE + 2); // the last byte of 0, all of 1, the first of 2
    expect(d.staleCount()).toBe(3);
    d.markDirty(0, 0);
    expect(d.staleCount()).toBe(3);
  });
});

describe("isZero", () => {
  test("finds a single non-zero byte anywhere, at any offset and length, also past its 4 MiB compare buffer", () => {
    const a = new Uint8Array(100);
    for (let s = 0; s < 20; s++)
      for (let e = s; e < 100; e += 7) {
        expect(isZero(a.subarray(s, e))).toBe(true);
        for (let k = s; k < e; k++) {
          a[k] = 1;
          expect(isZero(a.subarray(s, e))).toBe(false);
          a[k] = 0;
        }
      }
    const big = new Uint8Array(9 * 1024 * 1024);
    expect(isZero(big)).toBe(true);
    big[big.length - 1] = 1;
    expect(isZero(big)).toBe(false);
  });
});

describe("holes", () => {
  test("holes are hashed without being read, to the same digest as the zeros written out; a hole written later is rehashed", async () => {
    const thin = join(dir.path, "thin");
    const full = join(dir.path, "full");
    const size = 16 * REGION_SIZE;
    await sparseFile(thin, size);
    const data = new Uint8Array(REGION_SIZE + 4096).fill(9);
    overwrite(thin, 3 * REGION_SIZE - 4096, data);
    await sh(["cp", "--sparse=never", thin, full]);
    expect(imageDigest(thin, size)).toBe(imageDigest(full, size));

    // As the source sees it: the bulk copy skipped the holes, so the first refresh hashes
    // every region, the holes without a read; then a write into one of them.
    const d = new RegionDigests(size);
    d.refresh(thin, { all: true });
    expect(d.digest()).toBe(imageDigest(full, size));
    overwrite(thin, 10 * REGION_SIZE + 512, new Uint8Array(100).fill(3));
    d.markDirty(10 * REGION_SIZE + 512, 100);
    d.refresh(thin);
    overwrite(full, 10 * REGION_SIZE + 512, new Uint8Array(100).fill(3));
    expect(d.digest()).toBe(imageDigest(full, size));
  });
});

describe("a thin disk of several TiB", () => {
  test("8 TiB holding 24 MiB: the digest and its memory grow with the data, not the virtual size; a byte far out is still caught", async () => {
    const TiB = 1024 * 1024 * REGION_SIZE;
    const size = 8 * TiB;
    const a = join(dir.path, "huge-a");
    const b = join(dir.path, "huge-b");
    await sparseFile(a, size);
    const chunk = new Uint8Array(8 * REGION_SIZE);
    for (const at of [0, 3 * TiB + 5 * REGION_SIZE, size - 8 * REGION_SIZE]) overwrite(a, at, chunk.map((_, i) => (i * 31 + at / REGION_SIZE) & 0xff));
    await sh(["cp", "--sparse=always", a, b]);

    Bun.gc(true);
    const heap0 = process.memoryUsage().rss;
    const d = new RegionDigests(size);
    d.refresh(a, { all: true }); // holes taken a run at a time
    const digest = d.digest();
    Bun.gc(true);
    const grew = process.memoryUsage().rss - heap0;
    expect(grew).toBeLessThan(32 * 1024 * 1024); // a hash per MiB of virtual size was 256 MiB here
    expect(imageDigest(b, size)).toBe(digest);

    // Data where there was a hole, in a group that held none: caught once marked.
    const far = 6 * TiB + 123 * REGION_SIZE + 77;
    overwrite(b, far, Uint8Array.of(1));
    const db = new RegionDigests(size);
    db.refresh(b, { all: true });
    expect(db.digest()).not.toBe(digest);
    overwrite(a, far, Uint8Array.of(1));
    d.markDirty(far, 1);
    expect(d.refresh(a)).toBe(1);
    expect(d.digest()).toBe(db.digest());
    // And written back to zeros: the region holds no data again, the digest is the first one.
    overwrite(a, far, Uint8Array.of(0));
    d.markDirty(far, 1);
    d.refresh(a);
    expect(d.digest()).toBe(digest);
  });
});
