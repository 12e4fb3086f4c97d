// Disks whose size is no multiple of the migration's 64 KiB block (images converted from
// other formats often end this way: a VHD's size plus its footer, a disk's sector count).
// The last block is partial, and every path must carry it: the bulk copy (data, zero skip,
// holes), deltas in both modes, copy passes, a base at the destination, the digest, a disk
// of a set that is not the last, and freeze-and-copy. Each test writes into the tail during
// the migration, in requests that end at the disk's end, beside a full-speed writer.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { expectMovedWhole, type Hosts, hosts, lastEvent, MiB, removeHosts, source, spawnSource, withPair } from "./helpers/migration.ts";
import { lostWrites, stressWriter } from "./helpers/stress-writer.ts";
import { tailWriter } from "./helpers/tail-writer.ts";
import { randomFile, sh, sparseFile } from "./helpers/serve-process.ts";

afterAll(() => removeHosts());

const BLOCK = 64 * 1024;
/** 1 byte over a whole number of blocks, and 1 sector over. */
const OVER = [1, 512];

/** Host A's image resized to `MiB` + `over` bytes, with random data in its last 80 KiB (so the partial block holds data). */
async function oddHosts(sizeMiB: number, dataMiB: number, over: number): Promise<Hosts & { size: number }> {
  const h = { ...(await hosts(sizeMiB, dataMiB)), size: sizeMiB * MiB + over };
  const size = h.size;
  await sh(["truncate", "-s", String(size), h.image]);
  await randomFile(join(h.a, "tail"), 80 * 1024);
  await sh(["dd", `if=${join(h.a, "tail")}`, `of=${h.image}`, `seek=${size - 80 * 1024}`, "oflag=seek_bytes", "conv=notrunc", "status=none"]);
  return h;
}

/** Runs the source while a random 4 KiB writer (over the first `writerMiB`) and a tail writer hit the disk; checks the move. */
async function moveUnderWriters(h: Hosts & { size: number }, writerMiB: number, extra: string[], env: Record<string, string> = {}) {
  let done: Record<string, unknown> | undefined;
  await withPair(h, async ({ srv, dst }) => {
    // The random writer stays clear of the tail writer's span: each checks its own writes.
    const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: Math.min(writerMiB * MiB, h.size - 4 * BLOCK) });
    const t = await tailWriter(srv.socket, { span: 2 * BLOCK });
    await Bun.sleep(50);
    const run = spawnSource(h, dst.port, ["--insecure", ...extra], env);
    const r = await run.result();
    await w.stop();
    await t.stop();
    expect(r.code, r.stderr).toBe(0);
    done = r.done;
    await dst.waitFor("now serving");
    expect(t.writes).toBeGreaterThan(0);
    expect(t.refused).toBeGreaterThan(0); // it wrote up to the fence
    expect(t.lost(h.destImage)).toEqual([]); // before expectMovedWhole writes the last sector at the destination
    await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
  });
  return done!;
}

describe("a disk whose size is no multiple of the block", () => {
  for (const over of OVER) {
    test(`${over} byte${over > 1 ? "s" : ""} over: live, coalesced deltas, writes in the tail during bulk and deltas; identical, nothing lost`, async () => {
      const h = await oddHosts(16, 8, over);
      const done = await moveUnderWriters(h, 16, ["--bandwidth", "60mbit"]);
      expect((done.deltaCount as number) + (done.rangeDeltas as number)).toBeGreaterThan(0);
    });
  }

  test("64 MiB + 1,536 bytes, --deltas paper: every delta replayed, the tail's among them; identical", async () => {
    const h = await oddHosts(64, 16, 1536);
    const done = await moveUnderWriters(h, 64, ["--deltas", "paper", "--bandwidth", "200mbit"]);
    expect(done.deltaCount as number).toBeGreaterThan(0);
  });

  // No writer here: the tail's only way across is the bulk copy itself.
  for (const over of [...OVER, 1234]) {
    test(`a thin disk whose only data is its partial last block (${over} byte${over > 1 ? "s" : ""}): the holes skipped, the tail carried by the bulk copy`, async () => {
      const h = await hosts(64, 0);
      await sh(["truncate", "-s", String(64 * MiB + over), h.image]);
      await randomFile(join(h.a, "tail"), over);
      await sh(["dd", `if=${join(h.a, "tail")}`, `of=${h.image}`, `seek=${64 * MiB}`, "oflag=seek_bytes", "conv=notrunc", "status=none"]);
      await withPair(h, async ({ srv, dst }) => {
        const r = await spawnSource(h, dst.port, ["--insecure"]).result();
        expect(r.code, r.stderr).toBe(0);
        expect(r.done!.bulkHoleBytes as number).toBeGreaterThanOrEqual(63 * MiB);
        await dst.waitFor("now serving");
        await expectMovedWhole(h, new Map(), srv.socket, dst.socket);
      });
    });
  }

  test("copy passes over the tail (a writer rewriting it faster than the link drains the log): identical", async () => {
    const h = await oddHosts(16, 4, 512);
    const done = await moveUnderWriters(h, 2, ["--bandwidth", "2MB"], { WANMIG_TEST_COPY_PASS_MIN: String(4 * MiB) });
    expect(done.copyPasses as number).toBeGreaterThan(0);
  }, 180_000);

  test("freeze-and-copy: the tail written up to the freeze is there, and nothing after", async () => {
    const h = await oddHosts(16, 8, 1);
    await moveUnderWriters(h, 16, ["--mode", "freeze-and-copy"]);
  });

  test("against a base (the destination's older copy): only what changed travels, the tail among it; identical", async () => {
    const h = await oddHosts(32, 24, 1536);
    await sh(["cp", "--sparse=always", h.image, h.destImage]);
    const done = await moveUnderWriters(h, 2, ["--bandwidth", "200mbit"]);
    expect(done.bulkBytes as number).toBeLessThan(12 * MiB); // the base held most of the 24 MiB
  });

  test("a two-disk VM whose first disk has an odd size: disk1 starts inside a block of the VM's space; both identical", async () => {
    const h = await oddHosts(8, 4, 1536);
    const image1 = join(h.a, "data.img");
    const dest1 = join(h.b, "data.img");
    await sparseFile(image1, 8 * MiB + 1);
    await randomFile(join(h.a, "data1"), 2 * MiB);
    await sh(["dd", `if=${join(h.a, "data1")}`, `of=${image1}`, "bs=1M", "seek=6", "conv=notrunc", "status=none"]);
    await withPair({ a: h.a, b: h.b, image: [h.image, image1], destImage: [h.destImage, dest1] }, async ({ srv, dst }) => {
      const w0 = await stressWriter(srv.socket, { pattern: "random4k", bytes: 8 * MiB - 4 * BLOCK, exportName: "disk0" });
      const w1 = await stressWriter(srv.socket, { pattern: "seq1m", bytes: 7 * MiB, exportName: "disk1" });
      const t0 = await tailWriter(srv.socket, { exportName: "disk0", span: 2 * BLOCK });
      const t1 = await tailWriter(srv.socket, { exportName: "disk1", span: BLOCK });
      const run = await source(h, dst.port, ["--insecure", "--bandwidth", "60mbit", "--json"]);
      for (const w of [w0, w1, t0, t1]) await w.stop();
      expect(run.code, run.stderr).toBe(0);
      expect(lastEvent(run.stdout).deltaCount).toBeGreaterThan(0);
      await dst.waitFor("now serving");
      await sh(["cmp", h.image, h.destImage]);
      await sh(["cmp", image1, dest1]);
      expect(lostWrites(h.destImage, w0.acked)).toEqual([]);
      expect(lostWrites(dest1, w1.acked)).toEqual([]);
      expect(t0.lost(h.destImage)).toEqual([]);
      expect(t1.lost(dest1)).toEqual([]);
    });
  });
});
