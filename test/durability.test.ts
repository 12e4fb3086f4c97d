// The promises that must outlive any one process (issue 10): every write made during a
// migration reaches the destination, even across a serve killed and restarted; a fenced
// disk stays fenced; nobody else writes a served image; and a hand-off interrupted by a
// killed source or destination is finished or rolled back by the tool, never left with
// the VM writable nowhere or in two places. Every case runs under a writer that hits the
// disk as hard as it can, with incompressible data.
import { afterAll, describe, expect, test } from "bun:test";
import { ExitCode } from "../src/errors.ts";
import { NbdErr } from "../src/disk/nbd/nbd-protocol.ts";
import { expectMovedOnce, type Hosts, hosts, MiB, removeHosts, source, spawnSource, writable, writeError } from "./helpers/migration.ts";
import { RawNbd } from "./helpers/raw-nbd.ts";
import { sh, startDest, startServe, wanmig } from "./helpers/serve-process.ts";
import { lostWrites, mergeAcked, stressWriter, type StressPattern } from "./helpers/stress-writer.ts";

afterAll(() => removeHosts());

async function freePort(): Promise<number> {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

describe("a serve killed and restarted mid-migration goes on recording", () => {
  for (const [when, pattern] of [
    ["bulk", "random4k"],
    ["deltas", "seq1m"],
  ] as [string, StressPattern][]) {
    test(`SIGKILL mid-${when} (${pattern} writer before and after the restart): the migration completes with every acknowledged write`, async () => {
      const h = await hosts(128, 64);
      const srv1 = await startServe({ image: h.image, runDir: h.a });
      const dst = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"] });
      let srv2: Awaited<ReturnType<typeof startServe>> | undefined;
      try {
        const w1 = await stressWriter(srv1.socket, { pattern, bytes: 32 * MiB });
        // 200 Mbit/s: the writer outpaces it, so the deltas phase lasts until the throttle has
        // caught it up, long after the kill; at 2000 it was once over before the kill landed.
        const src = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "200mbit"]);
        await src.waitEvent((e) => (when === "bulk" ? e.event === "progress" && e.phase === "bulk" && (e.offset as number) >= 8 * MiB : e.event === "phase" && e.phase === "deltas"));
        srv1.proc.kill("SIGKILL");
        await srv1.proc.exited;
        await w1.stop();
        // As systemd's Restart=on-failure would: the same command again.
        srv2 = await startServe({ image: h.image, runDir: h.a });
        expect(srv2.stderr()).toContain("record mode goes on after a restart");
        const w2 = await stressWriter(srv2.socket, { pattern, bytes: 32 * MiB });
        await Bun.sleep(1000);
        await w2.stop();
        const r = await src.result();
        expect(r.stderr).toContain("the serve restarted");
        expect(r.code).toBe(0);
        await dst.waitFor("now serving");
        expect(w1.writes + w2.writes).toBeGreaterThan(0);
        await sh(["cmp", h.image, h.destImage]);
        expect(lostWrites(h.destImage, mergeAcked(w1.acked, w2.acked))).toEqual([]);
        await expectMovedOnce(srv2.socket, dst.socket);
      } finally {
        srv1.proc.kill("SIGKILL");
        await srv2?.stop();
        await dst.stop();
      }
    });
  }
});

describe("a recording that cannot go on", () => {
  test("the serve comes back after a reboot (another boot id): it drops the recording; the source aborts before its point of no return (exit 5), the disk writable", async () => {
    const h = await hosts(64, 32);
    const srv1 = await startServe({ image: h.image, runDir: h.a });
    const dst = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"] });
    let srv2: Awaited<ReturnType<typeof startServe>> | undefined;
    try {
      const src = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "40mbit"]);
      await src.waitEvent((e) => e.event === "progress" && e.phase === "bulk" && (e.offset as number) >= 4 * MiB);
      srv1.proc.kill("SIGKILL");
      await srv1.proc.exited;
      // What a reboot leaves: the state file says the recording began under another boot.
      const statePath = `${h.image}.wanmig.json`;
      const state = JSON.parse(await Bun.file(statePath).text());
      state.recording.bootId = "an-earlier-boot";
      await Bun.write(statePath, JSON.stringify(state));
      srv2 = await startServe({ image: h.image, runDir: h.a });
      expect(srv2.stderr()).toContain("did not survive the reboot");
      const r = await src.result();
      expect(r.code, r.stderr).toBe(ExitCode.abortedSafely);
      expect(r.stderr).toContain("lost the recording");
      expect(await writable(srv2.socket)).toBe(true);
      expect((await srv2.ctl.status()).mode).toBe("normal");
      // Told the source gave up, the destination exits; never left waiting for a resume.
      const gone = await Promise.race([dst.proc.exited, Bun.sleep(15_000).then(() => "still waiting")]);
      expect(gone, `the destination was not told:\n--- source\n${r.stderr}\n--- destination\n${dst.stderr()}`).not.toBe("still waiting");
      expect(gone).not.toBe(0);
    } finally {
      srv1.proc.kill("SIGKILL");
      await srv2?.stop();
      await dst.stop();
    }
  });
});

describe("the fence outlives the process", () => {
  test("after a completed migration the source serve is killed and started again: fenced, writes refused with EPERM; --unfence lifts it", async () => {
    const h = await hosts(32, 8);
    const srv = await startServe({ image: h.image, runDir: h.a });
    const dst = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"] });
    try {
      const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 8 * MiB });
      const run = await source(h, dst.port, ["--insecure"]);
      await w.stop();
      expect(run.code).toBe(0);
      srv.proc.kill("SIGKILL");
      await srv.proc.exited;
      const again = await startServe({ image: h.image, runDir: h.a });
      try {
        const st = await again.ctl.status();
        expect(st.mode).toBe("fenced");
        expect(st.handoff.state).toBe("moved");
        expect(again.stderr()).toMatch(/fenced since .*moved/);
        expect(await writeError(again.socket)).toBe(NbdErr.EPERM);
        // Not through the control API: the hand-off completed.
        expect(String(await again.ctl.unfence("a stray call").catch((e: Error) => e.message))).toContain("fenced for good");
        const text = await wanmig(["status", "--name", "vm", "--run-dir", h.a]);
        expect(text.stdout).toContain("fenced: the VM's disk moved");
      } finally {
        await again.stop();
      }
      const unfenced = await startServe({ image: h.image, runDir: h.a, args: ["--unfence"] });
      try {
        expect(unfenced.stderr()).toContain("unfenced");
        expect(await writable(unfenced.socket)).toBe(true);
      } finally {
        await unfenced.stop();
      }
    } finally {
      srv.proc.kill("SIGKILL");
      await dst.stop();
    }
  });
});

describe("migrating back", () => {
  test("A -> B, 1 MiB written at B, B -> A with A's fenced image as the base: about 1 MiB travels; A's disk is writable again once verified", async () => {
    const h = await hosts(32, 16);
    const srvA = await startServe({ image: h.image, runDir: h.a });
    const dstB = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"] });
    let dstA: Awaited<ReturnType<typeof startDest>> | undefined;
    try {
      expect((await source(h, dstB.port, ["--insecure"])).code).toBe(0);
      await dstB.waitFor("now serving");
      await srvA.stop(); // fenced for good; its image stays
      const c = await RawNbd.connect(dstB.socket);
      await c.go();
      expect(await c.write(3 * MiB, crypto.getRandomValues(new Uint8Array(MiB)))).toBe(0);
      c.disconnect();
      dstA = await startDest({ image: h.image, runDir: h.a, args: ["--insecure"] });
      const back = await wanmig(["source", "--name", "vm", "--run-dir", h.b, "--to", `127.0.0.1:${dstA.port}`, "--insecure", "--json"]);
      expect(back.code).toBe(0);
      const done = JSON.parse(back.stdout.trim().split("\n").at(-1)!);
      expect(done.bulkBytes).toBeLessThanOrEqual(MiB + 64 * 1024);
      await dstA.waitFor("now serving");
      await sh(["cmp", h.image, h.destImage]);
      expect(dstA.stderr()).toContain("the VM's disk lives here again");
      await expectMovedOnce(dstB.socket, dstA.socket);
      expect((await dstA.ctl.status()).handoff.state).toBe("verified");
    } finally {
      await srvA.stop();
      await dstB.stop();
      await dstA?.stop();
    }
  });
});

describe("one writer per image", () => {
  test("a second serve of the same image under another name is refused; qemu-io cannot write it; QEMU's own lock keeps serve out", async () => {
    const h = await hosts(8, 1);
    const srv = await startServe({ image: h.image, runDir: h.a });
    try {
      const second = await wanmig(["serve", "--image", h.image, "--name", "other", "--run-dir", h.a]);
      expect(second.code).toBe(ExitCode.badInput);
      expect(second.stderr).toContain(`${h.image} is in use by another process`);
      expect(second.stderr).not.toContain("    at "); // no stack
      const io = await sh(["qemu-io", "-f", "raw", "-c", "write 0 4k", h.image], { allowFail: true });
      expect(io.code).not.toBe(0);
      expect(io.stderr).toContain('Failed to get "write" lock');
    } finally {
      await srv.stop();
    }
    // The other way round: an image that qemu-nbd has open for writing is refused.
    const nbd = Bun.spawn(["qemu-nbd", "-f", "raw", "-t", "-k", `${h.a}/q.sock`, h.image], { stdout: "ignore", stderr: "ignore" });
    try {
      for (let i = 0; i < 100 && !(await Bun.file(`${h.a}/q.sock`).exists()); i++) await Bun.sleep(50);
      const refused = await wanmig(["serve", "--image", h.image, "--name", "vm", "--run-dir", h.a]);
      expect(refused.code).toBe(ExitCode.badInput);
      expect(refused.stderr).toContain("in use by another process");
    } finally {
      nbd.kill();
      await nbd.exited;
    }
  });
});

describe("the hand-off check catches a write the log misses", () => {
  for (const [fault, expected] of [
    ["drop-record", /escaped the log/],
    ["hide-write", /image digest mismatch/],
  ] as const) {
    test(`${fault}: the hand-off fails before the point of no return (exit 5), the source disk writable, the destination never serves`, async () => {
      const h = await hosts(64, 32);
      const srv = await startServe({ image: h.image, runDir: h.a, env: { WANMIG_TEST_FAULT: `${fault}:50` } });
      const dst = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"] });
      try {
        const src = spawnSource(h, dst.port, ["--insecure", "--bandwidth", "40mbit"]);
        await src.waitEvent((e) => e.event === "progress" && e.phase === "bulk" && (e.offset as number) >= 4 * MiB);
        // 100 writes where the bulk copy has passed: only the log can carry them; the 50th it lacks.
        const c = await RawNbd.connect(srv.socket);
        await c.go();
        for (let b = 0; b < 100; b++) expect(await c.write(b * 4096, crypto.getRandomValues(new Uint8Array(4096)))).toBe(0);
        c.disconnect();
        const r = await src.result();
        expect(r.code).toBe(ExitCode.abortedSafely);
        expect(r.stderr).toMatch(expected);
        expect(r.stderr).toContain("source unfenced");
        expect(await writable(srv.socket)).toBe(true);
        expect(await dst.proc.exited).not.toBe(0);
        expect(dst.stderr()).not.toContain("now serving");
      } finally {
        await srv.stop();
        await dst.stop();
      }
    });
  }
});

/** serve and a writer on A, dest on B at a fixed port (so that it can be started again there). */
async function handoffSetup(h: Hosts, destEnv: Record<string, string> = {}) {
  const port = await freePort();
  const srv = await startServe({ image: h.image, runDir: h.a });
  const dst = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"], port, env: destEnv });
  const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 16 * MiB });
  return { port, srv, dst, w };
}

describe("the source killed in the hand-off: a re-run finishes it", () => {
  for (const point of ["source-fenced", "source-barrier", "source-done"]) {
    test(`SIGKILL at ${point}: status says so at both ends; the same source command again completes the move (exit 0)`, async () => {
      const h = await hosts(64, 16);
      const { port, srv, dst, w } = await handoffSetup(h);
      try {
        const first = spawnSource(h, port, ["--insecure"], { WANMIG_TEST_KILL_AT: point });
        expect(await first.proc.exited).toBe(137);
        await w.stop();
        const st = await srv.ctl.status();
        expect(st.mode).toBe("fenced");
        expect(st.handoff.state).toBe("unfinished");
        expect((await wanmig(["status", "--name", "vm", "--run-dir", h.a])).stdout).toContain("fenced, hand-off unfinished");
        if (point !== "source-done") expect((await wanmig(["status", "--name", "vm", "--run-dir", h.b])).stdout).toContain("waiting for the source to resume");
        const again = await source(h, port, ["--insecure"]);
        expect(again.stderr).toContain("was left unfinished");
        expect(again.code, again.stderr).toBe(0);
        await dst.waitFor("now serving");
        await sh(["cmp", h.image, h.destImage]);
        expect(lostWrites(h.destImage, w.acked)).toEqual([]);
        await expectMovedOnce(srv.socket, dst.socket);
        expect((await srv.ctl.status()).handoff.state).toBe("moved");
      } finally {
        await w.stop();
        await srv.stop();
        await dst.stop();
      }
    });
  }

  test("SIGKILL at the fence, and the destination lost its copy: the re-run rolls back (exit 5); the source writable, the destination never serves", async () => {
    const h = await hosts(64, 16);
    const { port, srv, dst, w } = await handoffSetup(h);
    try {
      const first = spawnSource(h, port, ["--insecure"], { WANMIG_TEST_KILL_AT: "source-fenced" });
      expect(await first.proc.exited).toBe(137);
      await w.stop();
      dst.proc.kill("SIGKILL");
      await dst.proc.exited;
      await sh(["rm", "-f", h.destImage, `${h.destImage}.wanmig.json`]);
      const fresh = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"], port });
      const again = await source(h, port, ["--insecure"]);
      expect(again.code).toBe(ExitCode.abortedSafely);
      expect(again.stderr).toContain("rolled back");
      expect(await writable(srv.socket)).toBe(true);
      expect((await srv.ctl.status()).mode).toBe("normal");
      expect(await fresh.proc.exited).not.toBe(0);
      expect(fresh.stderr()).toContain("rolled the migration back");
      expect(fresh.stderr()).not.toContain("now serving");
    } finally {
      await w.stop();
      await srv.stop();
      await dst.stop();
    }
  });
});

describe("the destination killed in the hand-off: started again, the migration ends the same way", () => {
  for (const point of ["fence", "dest-barrier", "dest-verified", "dest-done"]) {
    test(`SIGKILL at ${point}: dest restarted with the same command; the source settles (exit 0)`, async () => {
      const h = await hosts(64, 16);
      const { port, srv, dst, w } = await handoffSetup(h, point === "fence" ? {} : { WANMIG_TEST_KILL_AT: point });
      let dst2: Awaited<ReturnType<typeof startDest>> | undefined;
      try {
        const src = spawnSource(h, port, ["--insecure"]);
        if (point === "fence") {
          await src.waitEvent((e) => e.event === "phase" && e.phase === "handoff");
          dst.proc.kill("SIGKILL");
        }
        expect(await dst.proc.exited).toBe(137);
        dst2 = await startDest({ image: h.destImage, runDir: h.b, args: ["--insecure"], port });
        const r = await Promise.race([src.result(), Bun.sleep(60_000).then(() => undefined)]);
        await w.stop();
        expect(r, `the source did not settle in 60 s:\n--- source\n${src.stderr()}\n--- destination, restarted\n${dst2.stderr()}`).toBeDefined();
        expect(r!.code, r!.stderr).toBe(0);
        await dst2.waitFor(/now serving|verified here before a restart/);
        await sh(["cmp", h.image, h.destImage]);
        expect(lostWrites(h.destImage, w.acked)).toEqual([]);
        await expectMovedOnce(srv.socket, dst2.socket);
      } finally {
        await w.stop();
        await srv.stop();
        dst.proc.kill("SIGKILL");
        await dst2?.stop();
      }
    });
  }
});
