// Convergence under writers that outrun the link (issue 12), end to end on loopback with
// --bandwidth as the slow link. Correctness is what is asserted: byte-identical at the
// fence, no acknowledged write lost, the source fenced (or, on an abort, writable again);
// that the throttle engaged and the timeout acted. Timings belong in `npm run bench -- downtime`.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { ExitCode } from "../src/errors.ts";
import { NbdErr } from "../src/disk/nbd/nbd-protocol.ts";
import { expectMovedWhole, hosts, MiB, removeHosts, spawnSource, withPair, writable, writeError } from "./helpers/migration.ts";
import { sh, startDest, startServe } from "./helpers/serve-process.ts";
import { lostWrites, stressWriter, type StressPattern } from "./helpers/stress-writer.ts";
import { startProxy } from "./helpers/proxy.ts";

afterAll(() => removeHosts());

describe("a writer as hard as it can, on a link it outruns", () => {
  for (const pattern of ["random4k", "seq1m"] as StressPattern[]) {
    test(`${pattern}: the throttle engages and the migration converges; identical at the fence, nothing acknowledged lost, the source fenced`, async () => {
      const h = await hosts(64, 8);
      await withPair(h, async ({ srv, dst }) => {
        const w = await stressWriter(srv.socket, { pattern, bytes: 32 * MiB });
        const run = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "8MB"]);
        const { code, stderr, done } = await run.result();
        await w.stop();
        expect(code, stderr).toBe(0);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
        expect(done!.throttleSteps).toBeGreaterThan(0);
        // The writes behind the copy were logged as ranges and went with the image's content.
        expect(done!.rangeDeltas as number).toBeGreaterThan(0);
        expect(done!.maxDowntimeMs).toBe(50);
        expect(typeof done!.estimatedStorageDowntimeMs).toBe("number");
        // The progress events carry the estimate against the budget.
        expect(run.events().some((e) => e.event === "progress" && e.phase === "deltas" && typeof e.estimateMs === "number" && e.budgetMs === 50)).toBe(true);
      });
    }, 120_000);
  }
});

describe("copy passes: the image's content in place of a log that rewrites it", () => {
  test("a link cut mid-pass: the source resumes from before the pass, and ends identical with nothing acknowledged lost", async () => {
    const h = await hosts(64, 16);
    await withPair(h, async ({ srv, dst }) => {
      const proxy = startProxy(dst.port);
      // 1 MiB writes over 4 MiB as fast as they are let: during the 8 s bulk the log holds
      // 3 times that. A pass waits for 8 MiB of log here (32 MiB by default: a 64 MiB bulk).
      const w = await stressWriter(srv.socket, { pattern: "seq1m", bytes: 4 * MiB });
      try {
        const run = spawnSource(h, proxy.port, ["--insecure", "--bandwidth", "2MB"], { WANMIG_TEST_COPY_PASS_MIN: String(8 * MiB) });
        await run.waitEvent((e) => e.phase === "deltas" && (e.copyLeftBytes as number) > 0, 60_000);
        proxy.cut();
        const { code, stderr, done } = await run.result();
        await w.stop();
        expect(code, stderr).toBe(0);
        expect(stderr).toContain("reconnecting");
        expect(done!.copyPasses as number).toBeGreaterThan(0);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      } finally {
        proxy.stop();
      }
    });
  }, 120_000);
});

describe("--timeout", () => {
  test("abort: past the deadline the migration stops; the VM's disk is writable here, not recording (exit 5)", async () => {
    const h = await hosts(64, 32);
    await withPair(h, async ({ srv, dst }) => {
      const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 16 * MiB, pauseMs: 2 });
      const run = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "2MB", "--timeout", "2s"]);
      const { code, stderr } = await run.result();
      await w.stop();
      expect(code, stderr).toBe(ExitCode.abortedSafely);
      expect(stderr).toContain("did not finish within --timeout 2s");
      expect(w.refused).toBe(0);
      expect(await writable(srv.socket)).toBe(true);
      const st = await srv.ctl.status();
      expect(st.mode).toBe("normal");
      expect(st.recording.active).toBe(false);
      expect(st.throttle.rateCapBytesPerSec).toBeUndefined();
    });
  }, 120_000);

  test("freeze: at the deadline the source fences as things are and copies what is left; identical, the summary says why", async () => {
    const h = await hosts(64, 8);
    await withPair(h, async ({ srv, dst }) => {
      const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 32 * MiB });
      // A budget of 0 ms is never met: only the deadline can end the catch-up.
      const run = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "8MB", "--max-downtime", "0ms", "--timeout", "4s", "--timeout-action", "freeze"]);
      const { code, stderr, done } = await run.result();
      await w.stop();
      expect(code, stderr).toBe(0);
      expect(String(done!.frozen)).toContain("--timeout 4s reached: fenced with");
      await sh(["cmp", h.image, h.destImage]);
      expect(lostWrites(h.destImage, w.acked)).toEqual([]);
      expect(await writeError(srv.socket)).toBe(NbdErr.EPERM);
    });
  }, 120_000);
});

describe("--timeout-action freeze mid-bulk", () => {
  test("a bulk copy that outlasts the deadline: the source fences at the deadline, not at the bulk's end, and copies the rest frozen; identical, nothing acknowledged lost, the downtime counted from the freeze", async () => {
    const h = await hosts(64, 48);
    await withPair(h, async ({ srv, dst }) => {
      const w = await stressWriter(srv.socket, { pattern: "random4k", from: 52 * MiB, bytes: 8 * MiB });
      // 48 MiB at 40 Mbit/s: a bulk copy of about 10 s, the deadline at 2 s.
      const run = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "40mbit", "--timeout", "2s", "--timeout-action", "freeze"]);
      const { code, stderr, done } = await run.result();
      await w.stop();
      expect(code, stderr).toBe(0);
      expect(stderr).toContain("--timeout 2s reached during the bulk copy: the source is fenced");
      // Fenced with most of the bulk still to copy: the downtime is that copy, seconds of it.
      expect(done!.storageDowntimeMs as number).toBeGreaterThan(3000);
      expect(w.refused).toBeGreaterThan(0);
      await sh(["cmp", h.image, h.destImage]);
      expect(lostWrites(h.destImage, w.acked)).toEqual([]);
      expect(await writeError(srv.socket)).toBe(NbdErr.EPERM);
    });
  }, 120_000);
});

describe("a delta log on a small file system", () => {
  test("the log stays within its bound, the VM's writes never fail for lack of space, and the migration converges or aborts cleanly", async () => {
    const h = await hosts(64, 16);
    const runDir = join(h.a, "tmpfs");
    await sh(["mkdir", "-p", runDir]);
    await sh(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", runDir]);
    const srv = await startServe({ image: h.image, runDir });
    const dst = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"] });
    try {
      // 1 MiB writes as fast as they go: the log (bound: half of 8 MiB) cannot hold a 2 MB/s link's backlog.
      const w = await stressWriter(srv.socket, { pattern: "seq1m", bytes: 32 * MiB });
      const run = spawnSource({ ...h, a: runDir }, dst.port, ["--insecure", "--bandwidth", "2MB"]);
      const { code, stderr } = await run.result();
      await w.stop(); // it throws had any write failed with anything but the fence's EPERM
      const df = await sh(["df", "-B1", "--output=used", runDir]);
      expect(Number(df.stdout.trim().split("\n")[1])).toBeLessThan(8 * MiB);
      if (code === 0) {
        await sh(["cmp", h.image, h.destImage]);
        expect(lostWrites(h.destImage, w.acked)).toEqual([]);
      } else {
        expect(code, stderr).toBe(ExitCode.abortedSafely);
        expect(stderr).toContain("the delta log reached its bound");
        expect(w.refused).toBe(0);
        expect(await writable(srv.socket)).toBe(true);
        expect((await srv.ctl.status()).recording.active).toBe(false);
      }
    } finally {
      await srv.stop();
      await dst.stop();
      await sh(["umount", runDir], { allowFail: true });
    }
  }, 120_000);
});
