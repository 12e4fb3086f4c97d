// Is guest RAM identical on both sides of a live migration? (issue 11)
//
// A TCG guest (scripts/guest/, writing to its disk) is migrated on loopback; the
// destination QEMU runs with -S, so once QEMU reports the migration completed both sides
// hold the same state, stopped: the source in postmigrate, the destination paused. Both
// dump all guest RAM (QMP pmemsave), the dumps are compared page by page, and only then
// does the destination run. Variants, each under the same CPU load (--hogs busy loops):
//   wanmig   the guest's disk on `wanmig serve`, moved by `wanmig source --hypervisor qemu`
//            (pause-before-switchover, the disk's hand-off in the pause, migrate-continue)
//   qemu     QEMU alone: both QEMUs on one shared nbdkit export, the same QMP sequence
//
//   bun scripts/guest/ram-compare.ts [--runs 10] [--variant wanmig,qemu] [--hogs 2]
//                                    [--accel tcg|tcg,thread=single] [--pause-ms 0]
//                                    [--guest block|fs] [--max-bandwidth MIB] [--keep DIR] [--json FILE]
// --guest fs runs the ext4 workload (init.sh mode=fs) on a file system made here;
// --pause-ms holds QEMU alone in pre-switchover that long (wanmig holds it for its hand-off);
// --max-bandwidth caps QEMU's RAM migration (migrate-set-parameters max-bandwidth, MiB/s);
// --keep DIR saves both sides' bytes of every differing page there (VARIANT-RUN-ADDR.src/.dst).
//
// Prints one line per run and a table: runs, runs with differing RAM, pages differing.

import { $, type Subprocess } from "bun";
import { closeSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { QmpClient } from "../../src/hypervisor/qmp.ts";
import { logger } from "../../src/log.ts";
import { holdAndCompare, migrationStatus } from "../../test/helpers/ram-check.ts";

const REPO = join(import.meta.dir, "..", "..");
const GUEST = join(REPO, ".cache", "guest");
const MAIN = join(REPO, "src", "main.ts");
const RAM_MIB = 128;
const PAGE = 4096;
const log = logger("ram-compare");

interface RunResult {
  variant: string;
  run: number;
  pagesDiffering: number;
  firstPages: string[];
  migrationMs: number;
}

function qemu(name: string, dir: string, disk: string, accel: string, guest: string, incoming?: string): { proc: Subprocess; qmpPath: string; testQmpPath: string } {
  const qmpPath = join(dir, `${name}.qmp`);
  const testQmpPath = join(dir, `${name}.test.qmp`);
  const argv = [
    "qemu-system-x86_64", "-name", name, "-accel", accel, "-m", String(RAM_MIB), "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
    "-kernel", join(GUEST, "vmlinux"), "-initrd", join(GUEST, "initrd.gz"), "-append", `console=ttyS0 quiet panic=-1 slp=0.02${guest === "fs" ? " mode=fs" : ""}`,
    "-serial", `file:${join(dir, `${name}.serial`)}`, "-qmp", `unix:${qmpPath},server=on,wait=off`, "-qmp", `unix:${testQmpPath},server=on,wait=off`,
    "-blockdev", `driver=nbd,node-name=disk0,server.type=unix,server.path=${disk},export=vm,open-timeout=60`,
    "-device", "virtio-blk-pci,drive=disk0,id=vblk0",
    ...(incoming ? ["-incoming", incoming, "-S"] : []),
  ];
  return { proc: Bun.spawn(argv, { stdout: "ignore", stderr: "inherit" }), qmpPath, testQmpPath };
}

async function qmpOf(path: string): Promise<QmpClient> {
  for (let i = 0; ; i++) {
    try {
      return await QmpClient.connect(path, log);
    } catch (err) {
      if (i > 200) throw err;
      await Bun.sleep(50);
    }
  }
}

async function waitFile(path: string, pattern: RegExp, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (pattern.test(await Bun.file(path).text().catch(() => ""))) return;
    await Bun.sleep(100);
  }
  throw new Error(`no ${pattern} in ${path}`);
}


function keepPages(keep: string, tag: string, src: string, dst: string, pages: number[]): void {
  const fs = openSync(src, "r");
  const fd = openSync(dst, "r");
  const buf = Buffer.alloc(PAGE);
  try {
    for (const p of pages.slice(0, 16))
      for (const [fdx, side] of [[fs, "src"], [fd, "dst"]] as const) {
        readSync(fdx, buf, 0, PAGE, p);
        writeFileSync(join(keep, `${tag}-0x${p.toString(16)}.${side}`), buf);
      }
  } finally {
    closeSync(fs);
    closeSync(fd);
  }
}

async function oneRun(variant: string, run: number, opts: { accel: string; pauseMs: number; guest: string; maxBandwidthMiB: number; keep?: string }): Promise<RunResult> {
  const dir = mkdtempSync(join(tmpdir(), `wanmig-ram-${variant}-`));
  const procs: Subprocess[] = [];
  const spawn = (argv: string[], env: Record<string, string> = {}) => {
    const p = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe", env: { ...process.env, ...env } });
    procs.push(p);
    return p;
  };
  const port = 21000 + Math.floor(Math.random() * 20000);
  try {
    const a = join(dir, "a");
    const b = join(dir, "b");
    await $`mkdir -p ${a} ${b}`;
    const image = join(a, "vm.img");
    await $`truncate -s 64M ${image}`;
    if (opts.guest === "fs") await $`mkfs.ext4 -q -F ${image}`;
    let srcDisk: string;
    let dstDisk: string;
    if (variant === "wanmig") {
      spawn([process.execPath, MAIN, "serve", "--image", image, "--name", "vm", "--run-dir", a]);
      spawn([process.execPath, MAIN, "dest", "--name", "vm", "--image", join(b, "vm.img"), "--run-dir", b, "--listen", `127.0.0.1:${port}`, "--insecure", "--hypervisor", "qemu", "--qmp", `unix:${join(dir, "dst.qmp")}`], { WANMIG_TEST_HOLD_AT: `dest-cont:${join(dir, "release")}` });
      srcDisk = join(a, "vm.nbd");
      dstDisk = join(b, "vm.nbd");
    } else {
      spawn(["nbdkit", "-f", "-U", join(dir, "shared.sock"), "-e", "vm", "file", image]);
      srcDisk = dstDisk = join(dir, "shared.sock");
    }
    for (let i = 0; i < 100 && !(await Bun.file(srcDisk).exists()); i++) await Bun.sleep(50);
    const src = qemu("src", dir, srcDisk, opts.accel, opts.guest);
    procs.push(src.proc);
    await waitFile(join(dir, "src.serial"), opts.guest === "fs" ? /GUEST ACK i=10 / : /GUEST W i=20 /, 90_000);
    const migrateUri = `tcp:127.0.0.1:${port + 1}`;
    const release = join(dir, "release");
    if (opts.maxBandwidthMiB) {
      // Parameters stay set in QEMU once this client leaves, for wanmig's source to use.
      const q = await qmpOf(src.qmpPath);
      await q.execute("migrate-set-parameters", { "max-bandwidth": opts.maxBandwidthMiB * 1024 * 1024 });
      q.close();
    }
    const t0 = performance.now();
    let dst: ReturnType<typeof qemu>;
    let source: Subprocess | undefined;
    if (variant === "wanmig") {
      // wanmig drives both QEMUs through their first monitors; its dest holds before its
      // `cont` until the release file exists (WANMIG_TEST_HOLD_AT), as in the real-VM tests.
      source = spawn([process.execPath, MAIN, "source", "--name", "vm", "--run-dir", a, "--to", `127.0.0.1:${port}`, "--insecure", "--hypervisor", "qemu", "--qmp", `unix:${src.qmpPath}`, "--migrate-uri", migrateUri]);
      for (let i = 0; i < 200 && !(await Bun.file(dstDisk).exists()); i++) await Bun.sleep(50);
      dst = qemu("dst", dir, dstDisk, opts.accel, opts.guest, migrateUri);
      procs.push(dst.proc);
    } else {
      const q = await qmpOf(src.qmpPath);
      dst = qemu("dst", dir, dstDisk, opts.accel, opts.guest, migrateUri);
      procs.push(dst.proc);
      (await qmpOf(dst.qmpPath)).close(); // up, and listening for the migration
      await q.execute("migrate-set-capabilities", { capabilities: [{ capability: "pause-before-switchover", state: true }] });
      await q.execute("migrate", { uri: migrateUri });
      while ((await migrationStatus(q)) !== "pre-switchover") await Bun.sleep(10);
      if (opts.pauseMs) await Bun.sleep(opts.pauseMs);
      await q.execute("migrate-continue", { state: "pre-switchover" });
      q.close();
    }
    const d = dst;
    const verdict = await holdAndCompare(
      { src: () => qmpOf(src.testQmpPath), dst: () => qmpOf(d.testQmpPath) },
      { dir, ramBytes: RAM_MIB * 1024 * 1024, release, timeoutMs: 120_000, keep: opts.keep ? (s, t, pages) => keepPages(opts.keep!, `${variant}-${run}`, s, t, pages) : undefined },
    );
    const migrationMs = Math.round(performance.now() - t0 - verdict.heldMs);
    if (source) {
      const code = await source.exited;
      if (code !== 0) throw new Error(`wanmig source exited ${code}: ${await new Response(source.stderr as ReadableStream).text()}`);
    } else {
      const q = await qmpOf(d.qmpPath);
      await q.execute("cont");
      q.close();
    }
    return { variant, run, pagesDiffering: verdict.pagesDiffering, firstPages: verdict.firstPages, migrationMs };
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    rmSync(dir, { recursive: true, force: true });
  }
}

function startHogs(n: number): Subprocess[] {
  return Array.from({ length: n }, () => Bun.spawn(["sh", "-c", "while :; do :; done"], { stdout: "ignore", stderr: "ignore" }));
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: "string", default: "10" },
      variant: { type: "string", default: "wanmig,qemu" },
      hogs: { type: "string", default: "2" },
      accel: { type: "string", default: "tcg" },
      "pause-ms": { type: "string", default: "0" },
      guest: { type: "string", default: "block" },
      "max-bandwidth": { type: "string", default: "0" },
      keep: { type: "string" },
      json: { type: "string" },
    },
  });
  await $`bash ${join(REPO, "scripts", "guest", "build.sh")} ${GUEST}`.quiet();
  if (values.keep) mkdirSync(values.keep, { recursive: true });
  const variants = values.variant!.split(",");
  const hogs = startHogs(Number(values.hogs));
  const results: RunResult[] = [];
  try {
    for (let r = 0; r < Number(values.runs); r++)
      for (const v of variants) {
        try {
          const res = await oneRun(v, r, { accel: values.accel!, pauseMs: Number(values["pause-ms"]), guest: values.guest!, maxBandwidthMiB: Number(values["max-bandwidth"]), keep: values.keep });
          results.push(res);
          console.error(`${v} run ${r}: ${res.pagesDiffering} pages differ${res.pagesDiffering ? ` (${res.firstPages.join(" ")})` : ""}; migration ${res.migrationMs} ms`);
        } catch (err) {
          console.error(`${v} run ${r}: failed: ${(err as Error).message}`);
        }
      }
  } finally {
    for (const h of hogs) h.kill("SIGKILL");
  }
  const lines = [`accel ${values.accel}, ${values.hogs} CPU hogs, pause ${values["pause-ms"]} ms, ${values.guest} guest${Number(values["max-bandwidth"]) ? `, max-bandwidth ${values["max-bandwidth"]} MiB/s` : ""}`, "| variant | runs | runs with RAM differing | pages differing (total) |", "|---|---|---|---|"];
  for (const v of variants) {
    const rs = results.filter((x) => x.variant === v);
    lines.push(`| ${v} | ${rs.length} | ${rs.filter((x) => x.pagesDiffering > 0).length} | ${rs.reduce((n, x) => n + x.pagesDiffering, 0)} |`);
  }
  console.log(lines.join("\n"));
  if (values.json) await Bun.write(values.json, JSON.stringify({ args: values, results }, null, 2));
}

if (import.meta.main) await main(process.argv.slice(2));
