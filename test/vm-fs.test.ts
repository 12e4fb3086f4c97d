// A real file system across a live migration: an ext4 guest (scripts/guest/init.sh,
// mode=fs) writes files, appends to a log and deletes old files, printing an ACK after
// each `sync`; it is moved live with --hypervisor qemu between two network namespaces, and
// the destination QEMU is killed a few seconds later, as a crash would.
// It holds when, after journal replay, e2fsck finds both images clean (the destination's,
// and the fenced source's), every ACKed file, deletion and log record is there byte for
// byte (read with debugfs), and the guest never oopsed. The step after the last ACK may
// already be on the disk; nothing else may differ. Guest RAM is compared at the switchover:
// a run where QEMU lost a page is QEMU's, and is run once more (helpers/ram-check.ts).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { buildGuest, type Guest, startGuest } from "./helpers/guest.ts";
import { hostPair, type HostPair, spawnInNs } from "./helpers/netns.ts";
import { type Attempt, ours, ramAtSwitchover, retryOnQemuRamLoss } from "./helpers/ram-check.ts";
import { MAIN, secretFile, sh, sparseFile, startServe, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir("wanmig-vmfs-");
let net: HostPair;
const procs: Subprocess[] = [];
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

const spawnIn = (ns: string, args: string[], env: string[] = []) => spawnInNs(ns, ["env", ...env, process.execPath, MAIN, ...args], args[0]!, procs);

/** The guest's ACKs, on either host: step -> md5 of the file that step wrote. */
function acks(...guests: Guest[]): Map<number, string> {
  const out = new Map<number, string>();
  for (const g of guests)
    for (const l of g.lines) {
      const m = /^GUEST ACK i=(\d+) md5=([0-9a-f]{32})/.exec(l.text);
      if (m) out.set(Number(m[1]), m[2]!);
    }
  return out;
}

async function debugfs(image: string, request: string): Promise<string> {
  return (await sh(["debugfs", "-R", request, image])).stdout;
}

/**
 * Replays the journal of a copy of `image`, checks it, and checks every ACKed step on it.
 * Returns what is wrong (empty when it holds).
 */
async function checkImage(image: string, acked: Map<number, string>, what: string): Promise<string[]> {
  const copy = `${image}.${what}.check.img`;
  await sh(["cp", "--sparse=always", image, copy]);
  const replay = await sh(["e2fsck", "-E", "journal_only", "-y", copy], { allowFail: true });
  if (replay.code > 1) return [`${what}: journal replay failed (${replay.code}): ${replay.stdout}${replay.stderr}`];
  const fsck = await sh(["e2fsck", "-fn", copy], { allowFail: true });
  const problems: string[] = [];
  if (fsck.code !== 0) problems.push(`${what}: e2fsck -fn exit ${fsck.code}: ${fsck.stdout.slice(0, 2000)}`);
  const last = Math.max(...acked.keys());
  const listing = await debugfs(copy, "ls -l /files");
  const present = new Set([...listing.matchAll(/\sf(\d+)\s*$/gm)].map((m) => Number(m[1])));
  for (const [i, md5] of acked) {
    // f_i is deleted by step i+8: by an ACKed step, or perhaps by the one after the last ACK.
    const mustExist = i + 8 > last + 1;
    const mustBeGone = i + 8 <= last;
    if (mustBeGone && present.has(i)) problems.push(`${what}: f${i} should have been deleted by ACKed step ${i + 8}`);
    if (mustExist && !present.has(i)) {
      problems.push(`${what}: ACKed f${i} is missing`);
      continue;
    }
    if (present.has(i)) {
      const out = `${copy}.f${i}`;
      await debugfs(copy, `dump /files/f${i} ${out}`);
      const got = new Bun.CryptoHasher("md5").update(await Bun.file(out).arrayBuffer()).digest("hex");
      if (got !== md5) problems.push(`${what}: f${i} differs from what the guest ACKed`);
    }
  }
  for (const i of present) if (i > last + 1) problems.push(`${what}: f${i} is there, but no step past ${last + 1} could have run`);
  const log = (await debugfs(copy, "cat /log")).trim().split("\n");
  const want = Array.from({ length: last }, (_, k) => `LOG ${k + 1}`);
  const ok = log.slice(0, last).join("\n") === want.join("\n") && (log.length === last || (log.length === last + 1 && log[last] === `LOG ${last + 1}`));
  if (!ok) problems.push(`${what}: the log holds ${log.length} records, ACKed ${last}; first difference near ${log.findIndex((l, k) => l !== `LOG ${k + 1}`) + 1}`);
  return problems;
}

/**
 * One run: the ext4 guest on A (with the Bonnie writer besides when `bonnie`), moved live
 * to B, B's QEMU killed once the guest has ACKed 10 more steps there, both images checked.
 * Returns the source's summary and the serve's log for what the caller asserts on top.
 */
async function ext4Migration(n: number, at: Attempt, opts: { bonnie?: boolean; imageMiB: number; sourceExtra?: string[] }) {
  const a = `${at.dir}-A`;
  const b = `${at.dir}-B`;
  await sh(["mkdir", "-p", a, b]);
  const image = join(a, "vm.img");
  await sparseFile(image, opts.imageMiB * 1024 * 1024);
  await sh(["mkfs.ext4", "-q", "-F", image]);
  const secret = await secretFile(`${at.dir}.secret`);
  const srv = await startServe({ image, runDir: a });
  at.defer(() => srv.stop());
  const src = startGuest({ name: "src", dir: a, nbdSocket: srv.socket, netnsExec: net.exec(net.a.ns), mode: "fs", bonnie: opts.bonnie });
  at.defer(() => src.stop());
  await src.waitFor(/GUEST ACK i=5 /, 90_000);
  if (opts.bonnie) await src.waitFor(/GUEST BONNIE round=1$/, 120_000);
  const port = 7200 + n * 10 + at.n;
  const migrateUri = `tcp:${net.b.ip}:${4460 + n * 10 + at.n}`;
  const release = `${at.dir}.release`;
  const dest = spawnIn(
    net.b.ns,
    ["dest", "--name", "vm", "--image", join(b, "vm.img"), "--run-dir", b, "--listen", `${net.b.ip}:${port}`, "--secret-file", secret, "--hypervisor", "qemu", "--qmp", `unix:${join(b, "dst.qmp")}`],
    [`WANMIG_TEST_HOLD_AT=dest-cont:${release}`],
  );
  at.defer(() => dest.proc.kill("SIGKILL"));
  await dest.log.waitFor("listening on");
  const dst = startGuest({ name: "dst", dir: b, nbdSocket: join(b, "vm.nbd"), netnsExec: net.exec(net.b.ns), incoming: migrateUri, hold: true, openTimeout: 120, mode: "fs", bonnie: opts.bonnie });
  at.defer(() => dst.stop());
  await Bun.sleep(1000);
  const source = spawnIn(net.a.ns, [
    "source", "--name", "vm", "--run-dir", a, "--to", `${net.b.ip}:${port}`, "--secret-file", secret,
    "--hypervisor", "qemu", "--qmp", `unix:${src.qmpPath}`, "--migrate-uri", migrateUri, ...(opts.sourceExtra ?? []),
  ]);
  const ram = ramAtSwitchover(at, src, dst, release);
  ram.catch(() => undefined);
  await ours(async () => expect(await source.proc.exited).toBe(0));
  await ram;
  await ours(() => dest.log.waitFor("the VM runs here (qemu)", 60_000));
  const lastAtSource = Math.max(...acks(src).keys());
  await dst.waitFor(new RegExp(`GUEST ACK i=${lastAtSource + 10} `), 120_000); // it carries on at B
  await dst.stop(); // the crash
  const acked = acks(src, dst);
  expect(src.failures()).toEqual([]);
  expect(dst.failures()).toEqual([]);
  await ours(async () => {
    expect(await checkImage(join(b, "vm.img"), acked, "destination")).toEqual([]);
    // The fenced source holds the state at the switchover: every step ACKed there.
    expect(await checkImage(image, acks(src), "source")).toEqual([]);
  });
  // The check can fail: the source's image lacks what B acknowledged.
  expect((await checkImage(image, acked, "negative")).length).toBeGreaterThan(0);
  const served = await srv.ctl.status();
  return { acked, atSource: acks(src).size, atDest: acks(dst).size, sourceOut: source.out(), serveLog: srv.stderr(), pauseDrain: served.throttle.pauseDrain, maxRequest: served.maxRequest };
}

describe("a real file system (ext4) migrated live, then the destination crashes", () => {
  test("after journal replay both images are clean, and every ACKed file, deletion and log record is there", async () => {
    await retryOnQemuRamLoss("ext4 guest", (n) => join(dir.path, `run${n}`), async (at) => {
      const r = await ext4Migration(0, at, { imageMiB: 64 });
      console.log(`ext4 guest: ${r.acked.size} steps ACKed (${r.atSource} at A, ${r.atDest} at B); both images clean`);
    });
  }, 480_000);

  test("under a Bonnie writer at full speed over a 24 Mbit/s link, throttled until QEMU stops the VM and then let go: the same checks hold", async () => {
    await retryOnQemuRamLoss("ext4 guest with Bonnie", (n) => join(dir.path, `bonnie${n}`), async (at) => {
      const r = await ext4Migration(1, at, { bonnie: true, imageMiB: 256, sourceExtra: ["--bandwidth", "24mbit"] });
      // The writer outran the link: the cap held its writes, and the stop let them go.
      const level = Number(/throttle\s+highest level (\d+)/.exec(r.sourceOut)?.[1] ?? -1);
      expect(level).toBeGreaterThanOrEqual(1);
      const held = /the VM stopped at the source: its last writes \((\d+) held now\)/.exec(r.serveLog);
      expect(held).not.toBeNull();
      // What the pause drained was counted, reported, and crossed before B ran (every ACKed
      // step is on B, checked above), each write within the request size the serve
      // advertised. Whether it fit the budget is not asserted: QEMU queues part of the
      // guest's writes where neither the serve nor the hold can see them (issue 33's
      // measurements), so it is a figure, printed below, not a promise.
      const heldBackS = Number(/held back ([\d.]+) s/.exec(r.sourceOut)?.[1] ?? 0);
      expect(r.pauseDrain).toBeDefined();
      expect(r.sourceOut).toContain(`pause drained    ${r.pauseDrain!.writes} writes`);
      expect(r.maxRequest).toBeGreaterThan(0);
      expect(r.pauseDrain!.bytes).toBeLessThanOrEqual(r.pauseDrain!.writes * r.maxRequest!);
      console.log(
        `ext4 guest with Bonnie: ${r.acked.size} steps ACKed (${r.atSource} at A, ${r.atDest} at B); throttle level ${level}; ${held![1]} writes held at QEMU's STOP, let go; ` +
          `the pause drained ${r.pauseDrain!.writes} writes (${r.pauseDrain!.bytes} bytes), held back ${heldBackS} s; both images clean`,
      );
    });
  }, 600_000);
});
