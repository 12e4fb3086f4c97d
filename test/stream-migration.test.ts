// Migrations over a slow link, where the bulk goes as pieces of one long-window zstd stream
// (zstd-stream.ts): a disk that repeats itself far apart crosses once; a link cut mid-bulk
// resumes on a new stream at both ends. Each under a writer as hard as it can go; the
// destination byte-identical at the fence, nothing acknowledged lost, the source fenced.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { expectMovedWhole, expectResumedOnce, hosts, MiB, removeHosts, spawnSource, withPair } from "./helpers/migration.ts";
import { startProxy } from "./helpers/proxy.ts";
import { sh } from "./helpers/serve-process.ts";
import { stressWriter } from "./helpers/stress-writer.ts";

afterAll(() => removeHosts());

/**
 * A 64 MiB disk: 4 MiB of log text at 0, 8 MiB of shared libraries at 8 MiB and the same
 * again at 28 MiB (a second copy of a library, as disks hold), holes elsewhere.
 */
async function repeatingDisk() {
  const h = await hosts(64, 0);
  const lib = join(h.a, "lib");
  await sh(["sh", "-c", `find /usr/lib -name '*.so*' -type f -size +64k 2>/dev/null | LC_ALL=C sort | xargs cat 2>/dev/null | head -c 8M > ${lib}`]);
  for (const seek of [8, 28]) await sh(["dd", `if=${lib}`, `of=${h.image}`, "bs=1M", `seek=${seek}`, "conv=notrunc", "status=none"]);
  await sh(["sh", "-c", `yes 'GET /index.html 200 1234 "Mozilla/5.0"' | head -c 4M | dd of=${h.image} bs=1M seek=0 conv=notrunc status=none`]);
  return { ...h, lib: readFileSync(lib) };
}

describe("the bulk as one long-window stream on a slow link", () => {
  test("a second copy of 8 MiB of libraries, 20 MiB after the first, crosses in next to nothing; random 4K writer; identical, nothing lost", async () => {
    const h = await repeatingDisk();
    await withPair(h, async ({ srv, dst }) => {
      // Random 4K writes as fast as they go, into 1 MiB of what were holes.
      const w = await stressWriter(srv.socket, { pattern: "random4k", from: 40 * MiB, bytes: MiB });
      const run = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "40mbit"]);
      const { code, stderr, done } = await run.result();
      await w.stop();
      expect(code, stderr).toBe(0);
      expect(done!.bulkStreamedBytes as number).toBeGreaterThan(16 * MiB);
      // Frames of their own send the library twice, each at least its size at level 19;
      // the stream sends it about once. The rest: the text and the writer's MiB.
      const once = Bun.zstdCompressSync(h.lib, { level: 19 }).length;
      expect(done!.bulkWireBytes as number).toBeLessThan(1.5 * once + 1.5 * MiB);
      await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
    });
  }, 120_000);

  test("the link cut mid-bulk: the resumed connection starts a new stream at both ends; sequential 1 MiB writer; identical, nothing lost", async () => {
    const h = await repeatingDisk();
    await withPair(h, async ({ srv, dst }) => {
      const proxy = startProxy(dst.port);
      const w = await stressWriter(srv.socket, { pattern: "seq1m", from: 40 * MiB, bytes: 16 * MiB });
      try {
        const run = spawnSource(h, proxy.port, ["--insecure", "--bandwidth", "40mbit"]);
        while (proxy.bytes < MiB) await Bun.sleep(10);
        proxy.cut();
        const result = await run.result();
        const { done } = result;
        await w.stop();
        expectResumedOnce(result);
        expect(done!.bulkStreamedBytes as number).toBeGreaterThan(4 * MiB);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      } finally {
        proxy.stop();
      }
    });
  }, 120_000);
});
