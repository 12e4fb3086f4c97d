// A VM moved back and forth as often as the operator likes: A→B→A→B… under a full-speed
// writer. Each host keeps the VM's old image when it leaves (fenced for good, still held by
// the server that served it); the VM's return is received onto that image as a base, the
// old server stopped for it, so only what changed travels. Every hop: exit 0, both images
// byte-identical, no acknowledged write of any hop lost, the disk writable at exactly one host.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ExitCode } from "../src/errors.ts";
import { NbdErr } from "../src/disk/nbd/nbd-protocol.ts";
import { type ImageState, stateFilePath, withoutSupersededIncoming } from "../src/disk/image/image-state.ts";
import { expectMovedOnce, hosts, type Hosts, lastEvent, MiB, removeHosts, source, writeError } from "./helpers/migration.ts";
import { lostWrites, mergeAcked, type StressPattern, stressWriter } from "./helpers/stress-writer.ts";
import { sh, startDest, startServe, wanmig } from "./helpers/serve-process.ts";
import { startSshd } from "./helpers/sshd.ts";

afterAll(() => removeHosts());

const IMAGE_MIB = 64;
const DATA_MIB = 48;
/** The writers stay in the disk's first 8 MiB: a return carries that, not the 48 MiB of data. */
const WRITTEN_MIB = 8;

/** Host X's image and run directory. */
function side(h: Hosts, at: "A" | "B") {
  return at === "A" ? { image: h.image, runDir: h.a } : { image: h.destImage, runDir: h.b };
}

/** Writers alternate between random 4 KiB and sequential 1 MiB, hop by hop. */
const patternOf = (hop: number): StressPattern => (hop % 2 ? "seq1m" : "random4k");

/** The checks after hop `hop`: identical, every acknowledged write of every hop there, the disk at one host; a return was incremental. */
async function expectHop(h: Hosts, hop: number, to: "A" | "B", acked: Map<number, Buffer[]>, bulkBytes: number): Promise<void> {
  const from = to === "A" ? "B" : "A";
  await sh(["cmp", h.image, h.destImage]);
  expect(lostWrites(side(h, to).image, acked)).toEqual([]);
  await expectMovedOnce(join(side(h, from).runDir, "vm.nbd"), join(side(h, to).runDir, "vm.nbd"));
  // The first hop carries the data; a return only what changed since the VM left (far under the data).
  if (hop === 0) expect(bulkBytes).toBeGreaterThan((DATA_MIB - 1) * MiB);
  else expect(bulkBytes, `hop ${hop + 1}`).toBeLessThan((WRITTEN_MIB + 4) * MiB);
}

describe("a VM moved back and forth", () => {
  test("eight hops A→B→A→… with source and dest, under a full-speed writer: each identical, nothing acknowledged lost, each return incremental; the old server on each host stopped for the return", async () => {
    const h = await hosts(IMAGE_MIB, DATA_MIB);
    const secret = ["--secret-file", h.secret];
    // The server of the VM's disk on each host: serve at A first, then each hop's dest.
    const servers: Record<"A" | "B", { proc: { exited: Promise<number> }; stop(): Promise<number>; socket: string } | undefined> = {
      A: await startServe({ image: h.image, runDir: h.a }),
      B: undefined,
    };
    let acked = new Map<number, Buffer[]>();
    try {
      for (let hop = 0; hop < 8; hop++) {
        const from = hop % 2 ? "B" : "A";
        const to = hop % 2 ? "A" : "B";
        const old = servers[to];
        // The destination's old server still holds its image, fenced since the VM left: dest stops it.
        const dst = await startDest({ image: side(h, to).image, runDir: side(h, to).runDir, args: secret });
        if (old) expect(await old.proc.exited).toBe(0);
        if (old) expect(dst.stderr()).toContain("fenced since the VM moved away");
        servers[to] = dst;
        const w = await stressWriter(servers[from]!.socket, { pattern: patternOf(hop), bytes: WRITTEN_MIB * MiB });
        await Bun.sleep(30);
        const run = await source({ ...h, a: side(h, from).runDir }, dst.port, [...secret, "--json"]);
        await w.stop();
        expect(run.code, `hop ${hop + 1} ${from}→${to}: ${run.stderr}`).toBe(0);
        await dst.waitFor("now serving");
        acked = mergeAcked(acked, w.acked);
        await expectHop(h, hop, to, acked, lastEvent(run.stdout).bulkBytes);
      }
    } finally {
      for (const s of Object.values(servers)) await s?.stop();
    }
  }, 240_000);

  test("four hops A→B→A→B→A with `wanmig migrate` over SSH: the daemon an earlier move left serving the old image is stopped and the VM received onto it", async () => {
    const h = await hosts(IMAGE_MIB, DATA_MIB);
    const sshd = await startSshd(join(h.a, "..", `sshd-${Date.now()}`));
    const to = `ssh://root@${sshd.host}:${sshd.port}`;
    const first = await startServe({ image: h.image, runDir: h.a });
    let acked = new Map<number, Buffer[]>();
    try {
      for (let hop = 0; hop < 4; hop++) {
        const from = hop % 2 ? "B" : "A";
        const dest = hop % 2 ? "A" : "B";
        const w = await stressWriter(join(side(h, from).runDir, "vm.nbd"), { pattern: patternOf(hop), bytes: WRITTEN_MIB * MiB });
        await Bun.sleep(30);
        const args = ["migrate", "vm", "--run-dir", side(h, from).runDir, "--to", to, "--remote-image", side(h, dest).image, "--remote-run-dir", side(h, dest).runDir, "--remote-bin", sshd.remoteBin, "--json"];
        const r = await wanmig(args, { env: { WANMIG_SSH: sshd.sshWrapper } });
        await w.stop();
        expect(r.code, `hop ${hop + 1} ${from}→${dest}: ${r.stderr}`).toBe(0);
        const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
        const name = events.find((e) => e.event === "check" && e.what === "name");
        if (hop >= 2) expect(name.detail).toContain("fenced since the VM moved away: that server will be stopped");
        acked = mergeAcked(acked, w.acked);
        await waitServing(side(h, dest).runDir);
        await expectHop(h, hop, dest, acked, events.at(-1).bulkBytes);
      }
      expect(await first.proc.exited).toBe(0); // stopped for the VM's first return to A
    } finally {
      await first.stop();
      for (const dir of [h.a, h.b]) killDaemon(dir);
      await sshd.stop();
    }
  }, 240_000);
});

/** The daemon `migrate` left at `runDir` serves (its status answers, not held). */
async function waitServing(runDir: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const r = await wanmig(["status", "--name", "vm", "--run-dir", runDir, "--json"]);
    if (r.code === 0 && JSON.parse(r.stdout).mode === "normal") return;
    await Bun.sleep(50);
  }
  throw new Error(`nothing serves vm in ${runDir}`);
}

function killDaemon(runDir: string): void {
  try {
    process.kill(Number(readFileSync(join(runDir, "vm.pid"), "utf8")), "SIGTERM");
  } catch {}
}

describe("an image the VM left: history, not a served migration", () => {
  const incoming = (at: string) => ({ name: "vm", recording: "vm.1.1.deltas", size: 1, blockSize: 65536, bulkOffset: 1, bulkDone: true, nextSeq: "9", state: "verified" as const, at });
  const fence = { since: "2026-12-06T10:00:00.000Z", reason: "moved" };

  test("an incoming record older than the move away is dropped; a newer one, or one with no move, stays", () => {
    const moved = { recording: "vm.2.1.deltas", at: "2026-12-06T10:00:00.000Z" };
    const older: ImageState = { version: 1, incoming: incoming("2026-12-06T09:00:00.000Z"), fence, moved };
    expect(withoutSupersededIncoming(older)).toEqual({ version: 1, fence, moved });
    const newer: ImageState = { version: 1, incoming: incoming("2026-12-06T11:00:00.000Z"), fence, moved };
    expect(withoutSupersededIncoming(newer)).toEqual(newer);
    const notMoved: ImageState = { version: 1, incoming: incoming("2026-12-06T09:00:00.000Z") };
    expect(withoutSupersededIncoming(notMoved)).toEqual(notMoved);
  });

  test("a state file as an earlier wanmig left it (the first move's verified incoming beside the later move away): dest takes the VM back onto that image, incrementally", async () => {
    const h = await hosts(32, 24);
    // B received the VM once, then it moved away again: B's image holds all three records.
    await sh(["cp", "--sparse=always", h.image, h.destImage]);
    const state: ImageState = {
      version: 1,
      incoming: { ...incoming("2026-12-06T09:00:00.000Z"), size: 32 * MiB },
      fence: { since: "2026-12-06T10:00:00.000Z", reason: "the VM's disk moved (hand-off of vm.2.1.deltas completed)", recording: "vm.2.1.deltas" },
      moved: { recording: "vm.2.1.deltas", at: "2026-12-06T10:00:00.000Z" },
    };
    writeFileSync(stateFilePath(h.destImage), JSON.stringify(state));
    const srv = await startServe({ image: h.image, runDir: h.a });
    const dst = await startDest({ image: h.destImage, runDir: h.b, args: ["--secret-file", h.secret] });
    try {
      const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 4 * MiB });
      const run = await source(h, dst.port, ["--secret-file", h.secret, "--json"]);
      await w.stop();
      expect(run.code, run.stderr).toBe(0);
      expect(lastEvent(run.stdout).bulkBytes).toBeLessThan(8 * MiB);
      await dst.waitFor("now serving");
      await sh(["cmp", h.image, h.destImage]);
      expect(lostWrites(h.destImage, w.acked)).toEqual([]);
      await expectMovedOnce(srv.socket, dst.socket);
    } finally {
      await dst.stop();
      await srv.stop();
    }
  });

  test("a return that fails before it is verified leaves the old image fenced: dest killed mid-copy, exit 5, the VM writable at the source only", async () => {
    const h = await hosts(64, 48);
    const secret = ["--secret-file", h.secret];
    // A→B, so that A's image is the old, fenced one.
    const first = await startServe({ image: h.image, runDir: h.a });
    const b = await startDest({ image: h.destImage, runDir: h.b, args: secret });
    expect((await source(h, b.port, secret)).code).toBe(0);
    await b.waitFor("now serving");
    // B→A: A's old server is stopped for it; the copy is cut short.
    const back = await startDest({ image: h.image, runDir: h.a, args: secret });
    expect(await first.proc.exited).toBe(0);
    const w = await stressWriter(b.socket, { pattern: "random4k", bytes: 32 * MiB });
    const run = source({ ...h, a: h.b }, back.port, [...secret, "--bandwidth", "40mbit"]);
    await back.waitFor("receiving vm");
    await Bun.sleep(300);
    back.proc.kill("SIGKILL");
    const r = await run;
    await w.stop();
    try {
      expect(r.code, r.stderr).toBe(ExitCode.abortedSafely);
      expect(w.refused).toBe(0);
      expect(await writeError(b.socket)).toBe(0); // the VM's disk: writable at B
      // A's image was never verified: whoever serves it now serves it fenced.
      const again = await startServe({ image: h.image, runDir: h.a });
      try {
        expect(await writeError(again.socket)).toBe(NbdErr.EPERM);
      } finally {
        await again.stop();
      }
    } finally {
      await b.stop();
    }
  });

  test("a server whose disk has not moved away is never stopped: dest refuses (exit 3), and the control socket refuses to retire it", async () => {
    const h = await hosts(8, 4);
    const srv = await startServe({ image: h.image, runDir: h.a });
    try {
      const r = await wanmig(["dest", "--name", "vm", "--image", h.image, "--run-dir", h.a, "--listen", "127.0.0.1:0", "--insecure"]);
      expect(r.code).toBe(ExitCode.badInput);
      expect(r.stderr).toContain(`vm is already served in ${h.a}`);
      await expect(srv.ctl.retire()).rejects.toThrow("has not moved away");
      expect(await writeError(srv.socket)).toBe(0); // it serves on
    } finally {
      await srv.stop();
    }
  });

  test("a moved-away server of other images is not stopped: dest names both and refuses (exit 3)", async () => {
    const h = await hosts(8, 4);
    const secret = ["--secret-file", h.secret];
    const srv = await startServe({ image: h.image, runDir: h.a });
    const b = await startDest({ image: h.destImage, runDir: h.b, args: secret });
    try {
      expect((await source(h, b.port, secret)).code).toBe(0);
      const r = await wanmig(["dest", "--name", "vm", "--image", join(h.a, "other.img"), "--run-dir", h.a, "--listen", "127.0.0.1:0", ...secret]);
      expect(r.code).toBe(ExitCode.badInput);
      expect(r.stderr).toContain(`vm is served in ${h.a} on ${h.image}, fenced since the VM moved away; this migration would receive onto ${join(h.a, "other.img")}`);
      expect(srv.proc.exitCode).toBeNull();
    } finally {
      await b.stop();
      await srv.stop();
    }
  });
});
