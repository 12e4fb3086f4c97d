// A VM with two disks, between real processes on loopback: one serve with --image twice
// (exports disk0 and disk1), one dest with --image twice, one source. The disks move as
// one: recorded from the same instant, fenced in the same turn, verified before release.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ExitCode } from "../src/errors.ts";
import { NbdErr } from "../src/disk/nbd/nbd-protocol.ts";
import { type DestHandle, expectResumedOnce, hosts, withPair, lastEvent, MiB, removeHosts, source, spawnSource, writable, writeError } from "./helpers/migration.ts";
import { startProxy } from "./helpers/proxy.ts";
import { lostWrites, stressWriter } from "./helpers/stress-writer.ts";
import { overwrite, randomFile, type ServeHandle, sh, sparseFile, wanmig } from "./helpers/serve-process.ts";

afterAll(() => removeHosts());

/** Host A's two disks: disk0 as `hosts` makes it, disk1 an odd size (its start is inside a 64 KiB block of the VM's space), part data. */
async function twoDiskHosts(disk0MiB: number, data0MiB: number, disk1Bytes: number) {
  const h = await hosts(disk0MiB, data0MiB);
  const image1 = join(h.a, "data.img");
  await sparseFile(image1, disk1Bytes);
  await randomFile(join(h.a, "data1"), 8 * MiB);
  await sh(["dd", `if=${join(h.a, "data1")}`, `of=${image1}`, "bs=1M", "seek=4", "conv=notrunc", "status=none"]);
  return { ...h, images: [h.image, image1], destImages: [h.destImage, join(h.b, "data.img")] };
}

type TwoDisks = Awaited<ReturnType<typeof twoDiskHosts>>;

/** serve with both images on host A, dest with `destImages` (both, by default) on host B, around `body`. */
function withTwoDisks(h: TwoDisks, destArgs: string[], body: (p: { srv: ServeHandle; dst: DestHandle }) => Promise<void>, destImages: string[] = h.destImages): Promise<void> {
  return withPair({ a: h.a, b: h.b, image: h.images, destImage: destImages }, body, destArgs);
}

describe("a VM with two disks", () => {
  test("a full-speed writer on each disk (random 4K on disk0, sequential 1M on disk1): both identical, nothing acknowledged lost, both fenced at once, both served at the destination", async () => {
    const h = await twoDiskHosts(40, 16, 24 * MiB + 12_800);
    await withTwoDisks(h, ["--secret-file", h.secret], async ({ srv, dst }) => {
      const st = await srv.ctl.status();
      expect(st.disks.map((d) => [d.export, d.image, d.offset, d.size])).toEqual([
        ["disk0", h.images[0], 0, 40 * MiB],
        ["disk1", h.images[1], 40 * MiB, 24 * MiB + 12_800],
      ]);
      const w0 = await stressWriter(srv.socket, { pattern: "random4k", bytes: 32 * MiB, exportName: "disk0" });
      const w1 = await stressWriter(srv.socket, { pattern: "seq1m", bytes: 20 * MiB, exportName: "disk1" });
      await Bun.sleep(100);
      const run = await source(h, dst.port, ["--secret-file", h.secret, "--json"]);
      // The writers write on after the fence; a writer that had no write in flight at it meets
      // it with its next one, which on two busy cores may come some time after the source ends.
      for (let i = 0; i < 200 && (w0.refused === 0 || w1.refused === 0); i++) await Bun.sleep(25);
      await w0.stop();
      await w1.stop();
      expect(run.code, run.stderr).toBe(0);
      const done = lastEvent(run.stdout);
      expect(done.deltaCount + done.rangeDeltas).toBeGreaterThan(0);
      await dst.waitFor("now serving");
      // Both writers ran into the fence: it stopped both disks.
      expect(w0.refused).toBeGreaterThan(0);
      expect(w1.refused).toBeGreaterThan(0);
      for (const i of [0, 1]) {
        await sh(["cmp", h.images[i]!, h.destImages[i]!]);
        expect(lostWrites(h.destImages[i]!, [w0, w1][i]!.acked)).toEqual([]);
        expect(await writeError(srv.socket, 0, `disk${i}`)).toBe(NbdErr.EPERM);
        expect(await writable(dst.socket, `disk${i}`)).toBe(true);
      }
      const there = await dst.ctl.status();
      expect(there.disks.map((d) => d.size)).toEqual([40 * MiB, 24 * MiB + 12_800]);
      expect(there.disks[1]!.io.writes).toBeGreaterThan(0); // the writable() check above, on disk1
      // wanmig status shows every disk.
      const text = (await wanmig(["status", "--name", "vm", "--run-dir", h.a])).stdout;
      expect(text).toContain(`disk0      ${h.images[0]}`);
      expect(text).toContain(`disk1      ${h.images[1]}`);
      const metrics = await (await fetch("http://localhost/metrics", { unix: join(h.a, "vm.ctl") } as RequestInit)).text();
      expect(metrics).toMatch(/^wanmig_io_writes_total\{name="vm",disk="disk1"\} [1-9]\d*$/m);
    });
  });

  test("a destination whose second image is too small refuses at the handshake: no byte written, nothing created, the source untouched (exit 5)", async () => {
    const h = await twoDiskHosts(8, 4, 16 * MiB);
    await sparseFile(h.destImages[1]!, 8 * MiB); // an existing disk1 there, half the size
    await withTwoDisks(h, ["--secret-file", h.secret], async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--secret-file", h.secret]);
      expect(run.code, run.stderr).toBe(ExitCode.abortedSafely);
      expect(run.stderr).toContain(`existing image ${h.destImages[1]} (disk1) is ${8 * MiB} bytes; the source's is ${16 * MiB}`);
      expect(existsSync(h.destImages[0]!)).toBe(false); // checked before any was created
      const st = await srv.ctl.status();
      expect(st.mode).toBe("normal");
      for (const i of [0, 1]) expect(await writable(srv.socket, `disk${i}`)).toBe(true);
    });
  });

  test("a destination given one image for a two-disk VM refuses at the handshake", async () => {
    const h = await twoDiskHosts(8, 4, 16 * MiB);
    await withTwoDisks(h, ["--secret-file", h.secret], async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--secret-file", h.secret]);
      expect(run.code, run.stderr).toBe(ExitCode.abortedSafely);
      expect(run.stderr).toContain("the source's VM has 2 disks; this destination was given 1 image");
      expect((await srv.ctl.status()).mode).toBe("normal");
    }, [h.destImages[0]!]);
  });

  test("the destination killed mid-bulk: exit 5, every disk writable at the source, recording stopped", async () => {
    const h = await twoDiskHosts(64, 48, 32 * MiB);
    await withTwoDisks(h, ["--secret-file", h.secret], async ({ srv, dst }) => {
      const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 16 * MiB, exportName: "disk1" });
      const run = source(h, dst.port, ["--secret-file", h.secret, "--bandwidth", "40mbit"]);
      await dst.waitFor("receiving vm");
      await Bun.sleep(300);
      dst.proc.kill("SIGKILL");
      const r = await run;
      await w.stop();
      expect(r.code, r.stderr).toBe(ExitCode.abortedSafely);
      const st = await srv.ctl.status();
      expect(st.mode).toBe("normal");
      expect(st.recording.active).toBe(false);
      for (const i of [0, 1]) expect(await writable(srv.socket, `disk${i}`)).toBe(true);
      expect(w.refused).toBe(0);
    });
  });

  test("the link cut mid-bulk, in disk1, under a writer on both disks: resumed from where the destination got, both identical, nothing lost", async () => {
    const h = await twoDiskHosts(48, 40, 64 * MiB);
    await withTwoDisks(h, ["--insecure"], async ({ srv, dst }) => {
      const proxy = startProxy(dst.port);
      try {
        const w0 = await stressWriter(srv.socket, { pattern: "random4k", bytes: 32 * MiB, exportName: "disk0", pauseMs: 1 });
        const w1 = await stressWriter(srv.socket, { pattern: "random4k", bytes: 32 * MiB, exportName: "disk1", pauseMs: 1 });
        const src = spawnSource(h, proxy.port, ["--insecure", "--compress", "none", "--bandwidth", "400mbit"]);
        while (proxy.bytes < 56 * MiB) await Bun.sleep(20); // past disk0's 48 MiB
        proxy.cut();
        const result = await src.result();
        await w0.stop();
        await w1.stop();
        expectResumedOnce(result);
        expect(result.done!.bulkBytes as number).toBeLessThan(112 * MiB + 16 * MiB); // not from zero
        await dst.waitFor("now serving");
        for (const i of [0, 1]) {
          await sh(["cmp", h.images[i]!, h.destImages[i]!]);
          expect(lostWrites(h.destImages[i]!, [w0, w1][i]!.acked)).toEqual([]);
        }
      } finally {
        proxy.stop();
      }
    });
  });

  test("dest --base once per disk: only the blocks that differ on either disk travel", async () => {
    const h = await twoDiskHosts(16, 8, 16 * MiB);
    const bases = h.destImages.map((p) => `${p}.template`);
    for (const [i, b] of bases.entries()) await sh(["cp", "--sparse=always", h.images[i]!, b]);
    const BLOCK = 64 * 1024;
    overwrite(h.images[0]!, 3 * BLOCK, crypto.getRandomValues(new Uint8Array(BLOCK)));
    overwrite(h.images[1]!, 70 * BLOCK + 5, Uint8Array.of(1, 2, 3));
    await withTwoDisks(h, ["--insecure", ...bases.flatMap((b) => ["--base", b])], async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--json"]);
      expect(run.code, run.stderr).toBe(0);
      expect(lastEvent(run.stdout).bulkBytes).toBe(2 * BLOCK);
      await dst.waitFor("now serving");
      for (const i of [0, 1]) await sh(["cmp", h.images[i]!, h.destImages[i]!]);
    });
  });
});
