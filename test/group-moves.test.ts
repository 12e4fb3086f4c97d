// Several `wanmig source --group` runs from one host, as real processes, each VM under a
// full-speed writer (random 4 KiB on one, sequential 1 MiB on another): one slot, so they
// take turns; `status --group` tells the job's progress (done, under way, waiting, bytes
// left) as it goes; a move killed while waiting reads as gone and frees nothing it did not
// hold; every move that ran is byte-identical, nothing acknowledged lost, one host each.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { expectMovedWhole, hosts, MiB, removeHosts } from "./helpers/migration.ts";
import { MAIN, type ServeHandle, startDest, startServe, wanmig } from "./helpers/serve-process.ts";
import { type StressWriter, stressWriter } from "./helpers/stress-writer.ts";

afterAll(removeHosts);

function spawnSource(runDir: string, name: string, port: number) {
  const p = Bun.spawn([process.execPath, MAIN, "source", "--name", name, "--run-dir", runDir, "--to", `127.0.0.1:${port}`, "--insecure", "--group", "evac", "--concurrency", "1", "--bandwidth", "80mbit", "--json"], { stdout: "pipe", stderr: "pipe" });
  const out = new Response(p.stdout).text();
  return { p, out };
}

async function groupStatus(runDir: string) {
  const r = await wanmig(["status", "--group", "evac", "--run-dir", runDir, "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

describe("moves of one group on one host", () => {
  test("they take turns at one slot under full-speed writers; status --group follows the job; a move killed while waiting is gone", async () => {
    const vms = ["vm1", "vm2", "vm3"];
    const h = await Promise.all(vms.map(() => hosts(48, 16)));
    const runDir = h[0]!.a; // one source host: every serve in one run directory
    const serves: ServeHandle[] = [];
    const writers: StressWriter[] = [];
    const dests: Awaited<ReturnType<typeof startDest>>[] = [];
    try {
      for (const [i, vm] of vms.entries()) {
        serves.push(await startServe({ image: h[i]!.image, runDir, name: vm }));
        dests.push(await startDest({ image: h[i]!.destImage, runDir: h[i]!.b, name: vm, args: ["--insecure"] }));
      }
      writers.push(await stressWriter(join(runDir, "vm1.nbd"), { pattern: "random4k", bytes: 32 * MiB }));
      writers.push(await stressWriter(join(runDir, "vm2.nbd"), { pattern: "seq1m", bytes: 32 * MiB }));
      const first = spawnSource(runDir, "vm1", dests[0]!.port);
      await Bun.sleep(500);
      const second = spawnSource(runDir, "vm2", dests[1]!.port);
      const third = spawnSource(runDir, "vm3", dests[2]!.port);
      let seen: any;
      for (let i = 0; i < 100; i++) {
        seen = await groupStatus(runDir);
        if (seen.underWay === 1 && seen.waiting === 2) break;
        await Bun.sleep(100);
      }
      expect(seen).toMatchObject({ group: "evac", done: 0, underWay: 1, waiting: 2 });
      expect(seen.bytesLeft).toBeGreaterThan(0);
      expect(seen.rate).toBe(10e6);
      // The third is killed while it waits: gone, and the other two still finish.
      third.p.kill("SIGKILL");
      await third.p.exited;
      expect((await groupStatus(runDir)).moves.find((m: any) => m.vm === "vm3").state).toBe("gone");
      expect(await first.p.exited).toBe(0);
      expect(await second.p.exited).toBe(0);
      expect((await second.out).split("\n").some((l) => l.includes('"event":"waiting"'))).toBe(true);
      for (const w of writers) await w.stop();
      const end = await groupStatus(runDir);
      expect(end).toMatchObject({ done: 2, underWay: 0, waiting: 0, failed: 1, bytesLeft: 0 });
      for (const [i, vm] of ["vm1", "vm2"].entries()) await expectMovedWhole(h[i]!, writers[i]!.acked, join(runDir, `${vm}.nbd`), dests[i]!.socket);
      expect((await serves[2]!.ctl.status()).state).toBe("serving");
      const text = await wanmig(["status", "--group", "evac", "--run-dir", runDir]);
      expect(text.stdout).toContain("group evac: 2 done, 0 under way, 0 waiting, 1 failed; 0.0 MiB left");
      expect(text.stdout).toMatch(/vm3\s+gone/);
    } finally {
      for (const w of writers) await w.stop().catch(() => undefined);
      for (const d of dests) await d.stop();
      for (const s of serves) await s.stop();
    }
  }, 180_000);
});
