// The acceptance test of the hypervisor hand-off: a real Linux guest under QEMU keeps
// writing to its disk (and re-reading what it wrote) while wanmig moves the disk and QEMU
// moves the memory, between two network namespaces joined by a veth pair.
//   host A: wanmig serve (the guest's disk), QEMU (source), wanmig source --hypervisor qemu
//   host B: wanmig dest --hypervisor qemu, QEMU -incoming (its disk: dest's NBD socket)
// Pass: the guest carries on at B with no verify failure, B's image holds the last write
// of every block the guest wrote (on either host), and A is fenced. The negative control
// shows the check can fail: a destination disk that misses the last writes is caught.
// Guest RAM is compared at each switchover: a run where QEMU lost a page is QEMU's, and is
// run once more (helpers/ram-check.ts); a failed check of wanmig's own work fails at once.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { ExitCode } from "../src/errors.ts";
import { NbdErr } from "../src/disk/nbd/nbd-protocol.ts";
import { moveTimes, writeError } from "./helpers/migration.ts";
import { buildGuest, type Guest, lostWrites, startGuest } from "./helpers/guest.ts";
import { hostPair, type HostPair, spawnInNs } from "./helpers/netns.ts";
import { Attempt, ours, ramAtSwitchover, retryOnQemuRamLoss } from "./helpers/ram-check.ts";
import { MAIN, secretFile, sh, sparseFile, startServe, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir("wanmig-vm-");
let net: HostPair;
const cleanups: (() => Promise<unknown> | void)[] = [];

beforeAll(async () => {
  await buildGuest();
  net = await hostPair();
}, 300_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  for (const p of procs) p.kill("SIGKILL");
  await net?.remove();
  dir.remove();
});

const procs: Subprocess[] = [];
/** wanmig inside a namespace. */
const spawnIn = (ns: string, args: string[], env: string[] = []) => spawnInNs(ns, ["env", ...env, process.execPath, MAIN, ...args], args[0]!, procs);
/** A run outside retryOnQemuRamLoss: its own attempt, closed with the file. */
const once = (name: string) => {
  const at = new Attempt(1, join(dir.path, name));
  cleanups.push(() => at.close());
  return at;
};

/**
 * Host A with the guest running and writing, host B waiting with dest and QEMU -incoming.
 * `disks: 2`: a second virtio disk (48 MiB, its own image), which the guest writes as well.
 */
async function guestOnA(at: Attempt, disks: 1 | 2 = 1) {
  const a = `${at.dir}-A`;
  const b = `${at.dir}-B`;
  await sh(["mkdir", "-p", a, b]);
  const names = disks === 2 ? ["vm.img", "data.img"] : ["vm.img"];
  const images = names.map((n) => join(a, n));
  await sparseFile(images[0]!, 64 * 1024 * 1024);
  if (disks === 2) await sparseFile(images[1]!, 48 * 1024 * 1024);
  const secret = await secretFile(`${at.dir}.secret`);
  const srv = await startServe({ image: images, runDir: a });
  at.defer(() => srv.stop());
  const exports = disks === 2 ? ["disk0", "disk1"] : ["vm"];
  const src = startGuest({ name: "src", dir: a, nbdSocket: srv.socket, netnsExec: net.exec(net.a.ns), exports });
  at.defer(() => src.stop());
  await src.waitFor(/GUEST W i=1 /, 90_000);
  return { a, b, image: images[0]!, images, destImage: join(b, "vm.img"), destImages: names.map((n) => join(b, n)), exports, secret, srv, src };
}

function summary(src: Guest, dst: Guest) {
  const lastSrc = src.writes().at(-1);
  const firstDst = dst.writes()[0];
  return { srcWrites: src.writes().length, dstWrites: dst.writes().length, serialGapMs: lastSrc && firstDst ? firstDst.t - lastSrc.t : undefined };
}

/**
 * Host B: dest, held before it lets the VM run until the RAM check is done (its release
 * file), and QEMU -incoming started held (-S). QEMU opens its disk at start-up, before any
 * data is there: dest lets that read through.
 */
async function heldDestination(at: Attempt, s: Awaited<ReturnType<typeof guestOnA>>, port: number, migrateUri: string, extra: string[] = []) {
  const release = `${at.dir}.release`;
  const dest = spawnIn(
    net.b.ns,
    ["dest", "--name", "vm", ...s.destImages.flatMap((i) => ["--image", i]), "--run-dir", s.b, "--listen", `${net.b.ip}:${port}`, "--secret-file", s.secret, "--hypervisor", "qemu", "--qmp", `unix:${join(s.b, "dst.qmp")}`, ...extra],
    [`WANMIG_TEST_HOLD_AT=dest-cont:${release}`],
  );
  at.defer(() => dest.proc.kill("SIGKILL"));
  await dest.log.waitFor("listening on");
  const dst = startGuest({ name: "dst", dir: s.b, nbdSocket: join(s.b, "vm.nbd"), netnsExec: net.exec(net.b.ns), incoming: migrateUri, hold: true, openTimeout: 120, exports: s.exports });
  at.defer(() => dst.stop());
  return { dest, dst, release };
}

/** Kills dest and B's QEMU once the source logs `when`: the source exits 5, the guest writes on at A (no failure), its disk served normally, recording off. */
async function destinationKilledMidway(name: string, port: number, migratePort: number, sourceExtra: string[], when: string) {
  const s = await guestOnA(once(name));
  const dest = spawnIn(net.b.ns, [
    "dest", "--name", "vm", "--image", s.destImage, "--run-dir", s.b, "--listen", `${net.b.ip}:${port}`, "--secret-file", s.secret,
    "--hypervisor", "qemu", "--qmp", `unix:${join(s.b, "dst.qmp")}`,
  ]);
  await dest.log.waitFor("listening on");
  const dst = startGuest({ name: "dst", dir: s.b, nbdSocket: join(s.b, "vm.nbd"), netnsExec: net.exec(net.b.ns), incoming: `tcp:${net.b.ip}:${migratePort}`, openTimeout: 120 });
  cleanups.push(() => dst.stop());
  const source = spawnIn(net.a.ns, [
    "source", "--name", "vm", "--run-dir", s.a, "--to", `${net.b.ip}:${port}`, "--secret-file", s.secret, ...sourceExtra,
    "--hypervisor", "qemu", "--qmp", `unix:${s.src.qmpPath}`, "--migrate-uri", `tcp:${net.b.ip}:${migratePort}`,
  ]);
  await source.log.waitFor(when, 120_000);
  dest.proc.kill("SIGKILL");
  await dst.stop();
  expect(await source.proc.exited).toBe(ExitCode.abortedSafely);
  expect(source.log.text()).toContain("the VM runs at the source");
  const before = s.src.writes().length;
  await Bun.sleep(2000);
  expect(s.src.writes().length).toBeGreaterThan(before + 5); // running at A again
  expect(s.src.failures()).toEqual([]);
  const st = await s.srv.ctl.status();
  expect(st.mode).toBe("normal");
  expect(st.recording.active).toBe(false);
}

describe("a real VM (QEMU, TCG) migrated live between two network namespaces", () => {
  test("the guest carries on at the destination: no verify failure, every last write on B's disk, A fenced", async () => {
    await retryOnQemuRamLoss("live migration", (n) => join(dir.path, `live${n}`), async (at) => {
      const s = await guestOnA(at);
      const { dest, dst, release } = await heldDestination(at, s, 7100 + at.n, `tcp:${net.b.ip}:${4440 + at.n}`, ["--json"]);
      await Bun.sleep(1500); // the guest writes on at A
      const source = spawnIn(net.a.ns, [
        // Three connections (auto would open one on this path): the guest's disk over several streams, as over a long path.
        "source", "--name", "vm", "--run-dir", s.a, "--to", `${net.b.ip}:${7100 + at.n}`, "--secret-file", s.secret, "--json", "--streams", "3",
        "--hypervisor", "qemu", "--qmp", `unix:${s.src.qmpPath}`, "--migrate-uri", `tcp:${net.b.ip}:${4440 + at.n}`,
      ]);
      const ram = ramAtSwitchover(at, s.src, dst, release);
      ram.catch(() => undefined); // awaited below, unless the source failed first
      const code = await source.proc.exited;
      await Bun.sleep(50); // the last stdout line
      const out = source.out();
      await ours(() => {
        expect(source.log.text()).toContain("point of no return: the destination verified the disk");
        expect(code).toBe(0);
      });
      const { heldMs } = await ram;
      await ours(() => dest.log.waitFor("the VM runs here (qemu)", 60_000));
      const before = dst.writes().length;
      await Bun.sleep(3000);
      expect(dst.writes().length).toBeGreaterThan(before + 5); // it carries on at B

      const { done, pausedAt, runningAt } = moveTimes(out, dest.out());
      // Downtime measured, not taken from QEMU: the source's pause (QEMU's STOP) to the
      // destination's run (its RESUME), both on this host's clock, less the RAM check's hold.
      const fig = summary(s.src, dst);
      console.log(
        `real VM: migration ${done.migrationTimeMs} ms; downtime: paused at A -> running at B ${Math.round(runningAt - pausedAt - heldMs)} ms ` +
          `(source's view ${done.downtimeMs} ms, storage ${done.storageDowntimeMs} ms; not counting ${heldMs} ms held for the RAM check); ` +
          `guest serial gap ${fig.serialGapMs} ms; writes A ${fig.srcWrites}, B ${fig.dstWrites}`,
      );
      expect(runningAt).toBeGreaterThan(pausedAt);
      expect(done.streams).toBe(3);
      expect(s.src.failures()).toEqual([]);
      expect(dst.failures()).toEqual([]);
      await ours(async () => {
        expect((await s.srv.ctl.status()).mode).toBe("fenced");
        // QEMU's STOP reached the serve before the fence: the guest's last writes were not held.
        expect(s.srv.stderr()).toMatch(/the VM stopped at the source: its last writes \(\d+ held now\) go through unthrottled[^]*fenced \(hand-off/);
        const srcQmp = await s.src.qmp();
        expect((await srcQmp.execute<{ status: string }>("query-status")).status).toBe("postmigrate");
        srcQmp.close();
      });
      await dst.stop();
      await ours(() => expect(lostWrites(s.destImage, [...s.src.writes(), ...dst.writes()])).toEqual([]));
    });
  }, 480_000);

  test("freeze-and-copy with --hypervisor qemu: the guest paused at A for its whole disk copy, then it carries on at B; no verify failure, every last write on B's disk, A fenced", async () => {
    await retryOnQemuRamLoss("freeze-and-copy", (n) => join(dir.path, `freeze${n}`), async (at) => {
      const s = await guestOnA(at);
      const { dest, dst, release } = await heldDestination(at, s, 7150 + at.n, `tcp:${net.b.ip}:${4490 + at.n}`, ["--json"]);
      await Bun.sleep(1500);
      const source = spawnIn(net.a.ns, [
        "source", "--name", "vm", "--run-dir", s.a, "--to", `${net.b.ip}:${7150 + at.n}`, "--secret-file", s.secret, "--json", "--mode", "freeze-and-copy",
        "--hypervisor", "qemu", "--qmp", `unix:${s.src.qmpPath}`, "--migrate-uri", `tcp:${net.b.ip}:${4490 + at.n}`,
      ]);
      const ram = ramAtSwitchover(at, s.src, dst, release);
      ram.catch(() => undefined);
      const code = await source.proc.exited;
      await Bun.sleep(50);
      await ours(() => expect(code, source.log.text()).toBe(0));
      await ram;
      await ours(() => dest.log.waitFor("the VM runs here (qemu)", 60_000));
      const before = dst.writes().length;
      await Bun.sleep(3000);
      expect(dst.writes().length).toBeGreaterThan(before + 5);
      const { done, pausedAt } = moveTimes(source.out(), dest.out());
      // The whole disk went while the guest was paused: its fence after the pause, no deltas.
      expect(done.deltaCount).toBe(0);
      expect(done.bulkBytes).toBeGreaterThan(0);
      const lastAtA = s.src.writes().at(-1)!;
      expect(lastAtA.t).toBeLessThanOrEqual(pausedAt + 1000); // nothing written at A after the pause (console lines lag a little)
      expect(s.src.failures()).toEqual([]);
      expect(dst.failures()).toEqual([]);
      await ours(async () => expect((await s.srv.ctl.status()).mode).toBe("fenced"));
      await dst.stop();
      await ours(() => expect(lostWrites(s.destImage, [...s.src.writes(), ...dst.writes()])).toEqual([]));
    });
  }, 480_000);

  test("freeze-and-copy, the destination killed during the disk copy: the stopped guest runs on at A, its disk unfenced before it resumes (no write refused), exit 5", async () => {
    await destinationKilledMidway("freeze-abort", 7102, 4447, ["--mode", "freeze-and-copy", "--bandwidth", "20mbit"], "copying the whole image");
  }, 240_000);

  test("a guest with two virtio disks, writing to both: both move in one hand-off, no verify failure, every last write on B's disks, both fenced at A", async () => {
    await retryOnQemuRamLoss("two disks", (n) => join(dir.path, `two${n}`), async (at) => {
      const s = await guestOnA(at, 2);
      const port = 7120 + at.n;
      const migrateUri = `tcp:${net.b.ip}:${4470 + at.n}`;
      const { dest, dst, release } = await heldDestination(at, s, port, migrateUri, ["--json"]);
      await Bun.sleep(1500);
      const source = spawnIn(net.a.ns, [
        "source", "--name", "vm", "--run-dir", s.a, "--to", `${net.b.ip}:${port}`, "--secret-file", s.secret, "--json",
        "--hypervisor", "qemu", "--qmp", `unix:${s.src.qmpPath}`, "--migrate-uri", migrateUri,
      ]);
      const ram = ramAtSwitchover(at, s.src, dst, release);
      ram.catch(() => undefined);
      const code = await source.proc.exited;
      await Bun.sleep(50);
      await ours(() => expect(code).toBe(0));
      const { heldMs } = await ram;
      await ours(() => dest.log.waitFor("the VM runs here (qemu)", 60_000));
      const before = dst.writes().filter((w) => w.dev === "vdb").length;
      await Bun.sleep(3000);
      expect(dst.writes().filter((w) => w.dev === "vdb").length).toBeGreaterThan(before + 3); // both disks carry on at B
      const { done, pausedAt, runningAt } = moveTimes(source.out(), dest.out());
      const perDisk = (done.disks as { export: string; deltas: number; bytes: number; finalDeltas: number; finalBytes: number }[])
        .map((d) => `${d.export} ${d.deltas} deltas (${d.bytes} B), ${d.finalDeltas} in the hand-off (${d.finalBytes} B)`)
        .join("; ");
      console.log(
        `real VM, two disks: migration ${done.migrationTimeMs} ms; downtime: paused at A -> running at B ${Math.round(runningAt - pausedAt - heldMs)} ms ` +
          `(storage ${done.storageDowntimeMs} ms: ${JSON.stringify(done.storageDowntimeParts)}; not counting ${heldMs} ms held for the RAM check); ${perDisk}; writes A ${s.src.writes().length}, B ${dst.writes().length}`,
      );
      expect(done.disks.map((d: { export: string }) => d.export)).toEqual(["disk0", "disk1"]);
      expect(done.disks.every((d: { deltas: number }) => d.deltas > 0)).toBe(true);
      expect(s.src.failures()).toEqual([]);
      expect(dst.failures()).toEqual([]);
      await ours(async () => {
        const st = await s.srv.ctl.status();
        expect(st.mode).toBe("fenced");
        for (const e of ["disk0", "disk1"]) expect(await writeError(s.srv.socket, 0, e)).toBe(NbdErr.EPERM);
      });
      await dst.stop();
      const all = [...s.src.writes(), ...dst.writes()];
      await ours(() => {
        expect(all.filter((w) => w.dev === "vdb").length).toBeGreaterThan(10);
        expect(lostWrites(s.destImages[0]!, all.filter((w) => w.dev === "vda"))).toEqual([]);
        expect(lostWrites(s.destImages[1]!, all.filter((w) => w.dev === "vdb"))).toEqual([]);
      });
    });
  }, 480_000);

  test("negative control: a destination disk without the last writes is caught by the same checks", async () => {
    const s = await guestOnA(once("stale"));
    await Bun.sleep(1000);
    // B's disk: a copy taken now, served as it is; QEMU moves the memory on its own.
    const stale = join(s.b, "vm.img");
    await sh(["cp", "--sparse=always", s.image, stale]);
    const staleSrv = await startServe({ image: stale, runDir: s.b });
    cleanups.push(() => staleSrv.stop());
    const dst = startGuest({ name: "dst", dir: s.b, nbdSocket: staleSrv.socket, netnsExec: net.exec(net.b.ns), incoming: `tcp:${net.b.ip}:4445` });
    cleanups.push(() => dst.stop());
    await Bun.sleep(1500);
    const qmp = await s.src.qmp();
    await qmp.execute("migrate", { uri: `tcp:${net.b.ip}:4445` });
    for (let i = 0; i < 600 && (await qmp.execute<{ status?: string }>("query-migrate")).status !== "completed"; i++) await Bun.sleep(50);
    qmp.close();
    await dst.waitFor(/GUEST W/, 30_000);
    await Bun.sleep(3000);
    await dst.stop();
    const lost = lostWrites(stale, [...s.src.writes(), ...dst.writes()]);
    expect(lost.length).toBeGreaterThan(0);
  }, 240_000);

  test("the source killed in the hand-off (QEMU in pre-switchover, its guest paused): the same command again finishes it, and the guest carries on at B", async () => {
    await retryOnQemuRamLoss("settled hand-off", (n) => join(dir.path, `settle${n}`), async (at) => {
      const s = await guestOnA(at);
      const port = 7110 + at.n;
      const migrateUri = `tcp:${net.b.ip}:${4450 + at.n}`;
      const { dest, dst, release } = await heldDestination(at, s, port, migrateUri);
      await Bun.sleep(1500);
      const args = [
        "source", "--name", "vm", "--run-dir", s.a, "--to", `${net.b.ip}:${port}`, "--secret-file", s.secret,
        "--hypervisor", "qemu", "--qmp", `unix:${s.src.qmpPath}`, "--migrate-uri", migrateUri,
      ];
      const first = spawnIn(net.a.ns, args, ["WANMIG_TEST_KILL_AT=source-fenced"]);
      await ours(async () => {
        expect(await first.proc.exited).toBe(137);
        expect((await s.srv.ctl.status()).handoff.state).toBe("unfinished");
        const qmp = await s.src.qmp();
        expect((await qmp.execute<{ status?: string }>("query-migrate")).status).toBe("pre-switchover");
        qmp.close();
      });
      const ram = ramAtSwitchover(at, s.src, dst, release);
      ram.catch(() => undefined);
      const again = spawnIn(net.a.ns, args);
      const code = await again.proc.exited;
      await ours(() => {
        expect(again.log.text()).toContain("is paused here: settling it with the destination");
        expect(code).toBe(0);
      });
      await ram;
      await ours(() => dest.log.waitFor("the VM runs here (qemu)", 60_000));
      const before = dst.writes().length;
      await Bun.sleep(3000);
      expect(dst.writes().length).toBeGreaterThan(before + 5); // it carries on at B
      expect(s.src.failures()).toEqual([]);
      expect(dst.failures()).toEqual([]);
      await ours(async () => expect((await s.srv.ctl.status()).handoff.state).toBe("moved"));
      await dst.stop();
      await ours(() => expect(lostWrites(s.destImage, [...s.src.writes(), ...dst.writes()])).toEqual([]));
    });
  }, 480_000);

  test("the destination dies during the memory copy: QEMU's migration is cancelled, the guest runs on at A, disk unfenced (exit 5)", async () => {
    await destinationKilledMidway("abort", 7101, 4446, [], "QEMU memory migration under way");
  }, 240_000);
});
