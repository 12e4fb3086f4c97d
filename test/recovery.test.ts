// Migrations that meet trouble: a base image at the destination, a source that dies and is
// run again, a link that loses or corrupts frames, a destination whose disk fills up.
// Each ends either identical and complete, or with a clear error, the right exit code and
// the VM's disk still served and writable at the source.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { ExitCode } from "../src/errors.ts";
import { msg, MsgType, PROTOCOL_VERSION } from "../src/net/protocol.ts";
import { connectTcp } from "../src/net/channel.ts";
import { startProxy } from "./helpers/proxy.ts";
import { type DestHandle, type Hosts, hosts, MiB, missingWrites, removeHosts, source, spawnSource, withPair, writable, writer } from "./helpers/migration.ts";
import { overwrite, randomFile, sh, startDest, startServe } from "./helpers/serve-process.ts";

afterAll(() => removeHosts());

const BLOCK = 64 * 1024;


describe("a base image at the destination", () => {
  test("dest --base: only the blocks that differ travel; zeros the base lacks go as ZERO", async () => {
    const h = await hosts(32, 16);
    const base = join(h.b, "template.img");
    await sh(["cp", "--sparse=always", h.image, base]);
    // The source moved on from the template in four blocks:
    overwrite(h.image, 3 * BLOCK, crypto.getRandomValues(new Uint8Array(BLOCK))); // changed data
    overwrite(h.image, 10 * BLOCK + 100, Uint8Array.of(1, 2, 3)); // three bytes changed
    overwrite(h.image, 5 * BLOCK, new Uint8Array(BLOCK)); // zeroed at the source
    overwrite(base, 300 * BLOCK, new Uint8Array(BLOCK).fill(7)); // the template has data where the source has a hole
    await withPair(h, async ({ dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--json"]);
      expect(run.code).toBe(0);
      const done = JSON.parse(run.stdout.trim().split("\n").at(-1)!);
      expect(done.bulkBytes).toBe(2 * BLOCK); // blocks 3 and 10
      expect(done.bulkBaseBlocks).toBe(16 * MiB / BLOCK - 3);
      await dst.waitFor("now serving");
      await sh(["cmp", h.image, h.destImage]);
    }, ["--insecure", "--base", base]);
  });

  test("dest --base refuses an --image that exists already", async () => {
    const h = await hosts(1, 0);
    await sh(["truncate", "-s", "1M", h.destImage]);
    const dst = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure", "--base", h.image] }).catch((e: Error) => e);
    expect(String(dst)).toContain("exists already");
  });
});

/** A first source run killed (SIGKILL) well into its bulk copy, as a crash would. */
async function killedMidBulk(h: Hosts, dst: DestHandle): Promise<void> {
  const first = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "40mbit"]);
  // 12 MiB at the destination, not only sent: on a busy machine it lags what the source queued.
  await first.waitEvent((e) => e.event === "progress" && (e.offset as number) >= 12 * MiB);
  for (let i = 0; ((await dst.ctl.status()).migration?.bulkOffset ?? 0) < 12 * MiB; i++) {
    if (i > 600) throw new Error(`the destination never had 12 MiB: ${dst.stderr()}`);
    await Bun.sleep(20);
  }
  first.proc.kill("SIGKILL");
  await first.proc.exited;
}

describe("the source dies mid-bulk and is run again", () => {
  test("killed: the disk stays writable; the next run adopts the delta log and the destination resumes where it was", async () => {
    const h = await hosts(64, 24);
    await withPair(h, async ({ srv, dst }) => {
      const w = await writer(srv.socket, 4 * MiB); // the first 4 MiB: the rest stays as the bulk copy found it
      try {
        await killedMidBulk(h, dst);
        expect(await writable(srv.socket)).toBe(true);
        expect((await srv.ctl.status()).recording.active).toBe(true); // nobody stopped it: the next run adopts it
        await Bun.sleep(300); // the VM writes on in the gap; those writes are in the log

        const second = spawnSource(h, dst.port, ["--insecure"]);
        const r = await second.result();
        expect(r.code).toBe(0);
        expect(r.stderr).toContain("adopting the delta log");
        const resumedAt = Number(/resuming at bulk (\d+)/.exec(dst.stderr())?.[1]);
        expect(resumedAt).toBeGreaterThan(4 * MiB);
        expect(r.done!.bulkBytes as number).toBeLessThanOrEqual(24 * MiB - resumedAt + BLOCK); // nothing below it again
        await w.stop();
        await dst.waitFor("now serving");
        await sh(["cmp", h.image, h.destImage]);
        expect(await missingWrites(dst.socket, w.acked)).toEqual([]);
      } finally {
        await w.stop();
      }
    });
  });

  test("killed, and its recording stopped: the next run starts over, and what arrived serves as a base", async () => {
    const h = await hosts(64, 24);
    await withPair(h, async ({ srv, dst }) => {
      const w = await writer(srv.socket, 4 * MiB); // the first 4 MiB: the rest stays as the bulk copy found it
      try {
        await killedMidBulk(h, dst);
        await srv.ctl.stopRecording(); // an operator cleaned up: that log is gone
        const second = spawnSource(h, dst.port, ["--insecure"]);
        const r = await second.result();
        expect(r.code).toBe(0);
        expect(dst.stderr()).toContain("starting over");
        // About 12 MiB had arrived; all of it but the writer's 4 MiB is still current.
        expect(r.done!.bulkBaseBlocks as number).toBeGreaterThanOrEqual((6 * MiB) / BLOCK);
        await w.stop();
        await dst.waitFor("now serving");
        await sh(["cmp", h.image, h.destImage]);
        expect(await missingWrites(dst.socket, w.acked)).toEqual([]);
      } finally {
        await w.stop();
      }
    });
  });
});

describe("a link that loses or corrupts what TCP would not notice", () => {
  test("deltas lost on the way are caught by the image digest: the destination never serves, the source serves again (exit 5)", async () => {
    const h = await hosts(32, 8);
    await withPair(h, async ({ srv, dst }) => {
      // Every DELTA vanishes (some are redundant with the bulk copy; not all can be: the
      // writer goes on writing after the bulk copy has passed).
      let dropped = 0;
      const proxy = startProxy(dst.port, { tamper: (type, frame) => (type === MsgType.DELTA ? (dropped++, null) : frame) });
      const w = await writer(srv.socket, 32 * MiB);
      try {
        // A budget the estimate fits in: deltas that never arrive are never acknowledged, so the
        // catch-up could not converge on the default 50 ms once the writer outran a fence at the
        // floor (which now waits for the throttle to have tried); the digest is what is tested.
        const run = await source(h, proxy.port, ["--insecure", "--deltas", "paper", "--bandwidth", "100mbit", "--max-downtime", "10s"]);
        await w.stop();
        expect(dropped).toBeGreaterThan(0);
        expect(run.code).toBe(ExitCode.abortedSafely);
        expect(run.stderr).toContain("point of no return");
        expect(run.stderr).toContain("image digest mismatch");
        expect(run.stderr).toContain("source unfenced");
        expect(dst.stderr()).toContain("image digest mismatch");
        expect(dst.stderr()).not.toContain("now serving");
        // Running in one place only: the source serves again, the destination never released.
        expect((await srv.ctl.status()).mode).toBe("normal");
        expect(await writable(srv.socket)).toBe(true);
        expect(await dst.proc.exited).not.toBe(0);
      } finally {
        await w.stop();
        proxy.stop();
      }
    });
  });

  for (const [what, damage, expected] of [
    ["a flipped bit in a bulk block", (f: Uint8Array) => (f[40]! ^= 0x10, f), /checksum mismatch on a BULK frame/],
    ["a frame header claiming 1 GiB", (f: Uint8Array) => (new DataView(f.buffer, f.byteOffset).setUint32(8, 2 ** 30), f), /exceeds the \d+-byte limit/],
  ] as const) {
    test(`${what}: the destination refuses the stream; the source aborts safely (exit 5), disk writable`, async () => {
      const h = await hosts(16, 8);
      await withPair(h, async ({ srv, dst }) => {
        let bulk = 0;
        // The second of the two 4 MiB BULK frames: mid-bulk.
        const proxy = startProxy(dst.port, { tamper: (type, frame) => (type === MsgType.BULK && ++bulk === 2 ? damage(frame) : frame) });
        try {
          const run = await source(h, proxy.port, ["--insecure"]);
          expect(run.code).toBe(ExitCode.abortedSafely);
          expect(run.stderr).toMatch(expected);
          expect(dst.stderr()).toMatch(expected);
          expect((await srv.ctl.status()).recording.active).toBe(false);
          expect(await writable(srv.socket)).toBe(true);
        } finally {
          proxy.stop();
        }
      });
    });
  }
});

describe("the destination's disk fills up", () => {
  test("ENOSPC there: the source aborts safely with the cause (exit 5), its disk writable and no longer recording", async () => {
    const h = await hosts(16, 12);
    const small = join(h.b, "small");
    await sh(["mkdir", "-p", small]);
    await sh(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", small]);
    try {
      const srv = await startServe({ image: h.image, runDir: h.a });
      const dst = await startDest({ image: join(small, "vm.img"), runDir: h.b, args: ["--insecure"] });
      try {
        const run = await source(h, dst.port, ["--insecure", "--compress", "none"]);
        expect(run.code).toBe(ExitCode.abortedSafely);
        expect(run.stderr).toMatch(/ENOSPC|no space/i);
        expect(await dst.proc.exited).not.toBe(0);
        expect((await srv.ctl.status()).recording.active).toBe(false);
        expect(await writable(srv.socket)).toBe(true);
      } finally {
        await srv.stop();
        await dst.stop();
      }
    } finally {
      await sh(["umount", "-l", small], { allowFail: true });
    }
  });
});

describe("one migration of a disk at a time", () => {
  test("a second source while the first runs is refused (the disk could otherwise go to two hosts); the first completes", async () => {
    const h = await hosts(32, 16);
    await withPair(h, async ({ srv, dst }) => {
      const first = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "40mbit"]);
      await first.waitEvent((e) => e.phase === "bulk");
      const second = await source(h, dst.port, ["--insecure"]);
      expect(second.code).toBe(ExitCode.badInput); // "a resource busy", as the exit table says
      expect(second.stderr).toContain(`already under way (source pid ${first.proc.pid})`);
      const freeze = await source(h, dst.port, ["--insecure", "--mode", "freeze-and-copy"]);
      expect(freeze.stderr).toContain("recording for a live migration");
      expect((await first.result()).code).toBe(0);
      await dst.waitFor("now serving");
      await sh(["cmp", h.image, h.destImage]);
      expect((await srv.ctl.status()).mode).toBe("fenced");
    });
  });
});

describe("a peer speaking another protocol version", () => {
  test("dest answers a HELLO of another version with ERROR naming both versions, and waits on for a real source", async () => {
    const h = await hosts(4, 1);
    await withPair(h, async ({ dst }) => {
      const ch = await connectTcp("127.0.0.1", dst.port);
      await ch.send({ ...msg.hello({ nonce: "00".repeat(16), name: "vm", size: 4 * MiB, blockSize: 65536, recording: "x" }), version: PROTOCOL_VERSION + 1 });
      const err = await ch.recv(5000).catch((e: Error) => e);
      expect(String((err as { message?: string }).message)).toContain(`protocol version ${PROTOCOL_VERSION + 1} is not supported; this destination speaks ${PROTOCOL_VERSION}`);
      ch.close();
      await dst.waitFor(`source speaks protocol ${PROTOCOL_VERSION + 1}`);
      // Still waiting: a real source migrates.
      const run = await source(h, dst.port, ["--insecure"]);
      expect(run.code).toBe(0);
      await dst.waitFor("now serving");
    });
  });
});
