// The seed's own hypervisor, for real: Debian's Xen 4.17 nested under QEMU (TCG), a PV dom0,
// and a PVH domU whose disk is wanmig's export (attached in dom0 with the kernel's NBD
// client, given to the domU as phy:/dev/nbd0). Inside dom0 (scripts/xen/dom0-init.sh)
// `wanmig source --hypervisor xl` moves the domain to a `wanmig dest --hypervisor xl` on the
// same host: xl migrate -s "" DOMAIN "<attach /dev/nbd1> xl migrate-receive -p", the disk's
// hand-off, xl unpause. The domU's guest writes numbered records to its disk as fast as it
// can and re-reads them (scripts/guest/init.sh, disk=xvda).
// Pass: the source exits 0, the domU carries on at B with no verify failure, B's image holds
// the last write of every block the guest wrote on either side, A's export is fenced.
// Slow (minutes under TCG): only with WANMIG_SLOW=1 (`npm run test:xen`).
// Nested under TCG with two QEMU vCPUs (-smp 2), the domU triple-faulted inside Xen at A in
// 4 of 13 runs (in its idle loop after hlt, after an rdtsc Xen traps, once with Xen's own RIP
// saved as the guest's: QEMU's nested SVM); with one vCPU, which the test uses, in none of 15
// (README, "Xen, for real"). The one failure run again (at most 3 runs) is such a fault at A before
// wanmig's hand-off: xl cannot suspend the dead domU ("failed to suspend at sender") and
// wanmig aborts, which is checked first: exit 5 with the domain running at A, or 6 naming
// the state the fault left it in, and A's disk not fenced. A fault after the hand-off (at B,
// after xl unpause) fails the test, as does any other failure.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { guestFailures, guestWrites, lostWrites, type SerialLine } from "./helpers/guest.ts";
import { REPO, sh, tempDir } from "./helpers/serve-process.ts";

const XEN = join(REPO, ".cache", "xen");
const slow = !!process.env.WANMIG_SLOW;
const dir = tempDir("wanmig-xen-");

beforeAll(async () => {
  if (!slow) return;
  await sh(["bash", join(REPO, "scripts", "xen", "build.sh"), XEN]);
  await sh([process.execPath, join(REPO, "scripts", "build.ts"), "--baseline"]);
}, 600_000);

afterAll(() => dir.remove());

interface Line {
  t: number;
  text: string;
}

/** Boots Xen with dom0 under QEMU and collects the serial console until QEMU exits (dom0 reboots at the end). */
async function runNested(dataDisk: string, timeoutMs: number): Promise<{ lines: Line[]; code: number | null }> {
  const argv = [
    // +npt: Xen sees HAP, which a PVH domU needs; SSSE3, SSE4 and POPCNT: Bun's baseline runtime needs them.
    // One vCPU (README, "Xen, for real"): with two, the domU triple-faulted inside Xen in 4 of 13
    // runs; WANMIG_XEN_SMP=2 to measure it again.
    "qemu-system-x86_64", "-accel", process.env.WANMIG_XEN_ACCEL ?? "tcg", "-cpu", "qemu64,+svm,+npt,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16", "-m", "2G",
    "-smp", process.env.WANMIG_XEN_SMP ?? "1",
    "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
    "-kernel", join(XEN, "xen"),
    "-initrd", `${join(XEN, "vmlinuz")} console=hvc0 earlyprintk=xen,${join(XEN, "dom0-initrd.gz")}`,
    // WANMIG_XEN_APPEND: more of Xen's command line, for measuring (e.g. dom0_max_vcpus=1 dom0_vcpus_pin).
    "-append", ["dom0_mem=1024M,max:1024M console=com1 com1=115200,8n1", process.env.WANMIG_XEN_APPEND].filter(Boolean).join(" "),
    "-drive", `file=${dataDisk},if=virtio,format=raw`,
  ];
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const lines: Line[] = [];
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  let partial = "";
  // WANMIG_XEN_SERIAL=FILE: the console as it comes, to follow a run.
  const tee = process.env.WANMIG_XEN_SERIAL ? Bun.file(process.env.WANMIG_XEN_SERIAL).writer() : undefined;
  for await (const chunk of proc.stdout) {
    tee?.write(chunk);
    tee?.flush();
    partial += new TextDecoder().decode(chunk);
    const parts = partial.split("\n");
    partial = parts.pop()!;
    for (const text of parts) lines.push({ t: Date.now(), text: text.replace(/\r+$/, "") });
  }
  clearTimeout(timer);
  await tee?.end();
  return { lines, code: await proc.exited };
}

/** "CONA [2026-11-30 14:00:01] GUEST W …": the domU's console lines dom0 printed, without xenconsoled's timestamp (seconds only: the guest's own `up=` is finer). */
function consoleLines(lines: Line[], prefix: string): SerialLine[] {
  return lines.filter((l) => l.text.startsWith(`${prefix} `)).map((l) => ({ t: l.t, text: l.text.slice(prefix.length + 1).replace(/^\[[^\]]*\] ?/, "") }));
}

function events(lines: Line[], prefix: string): Record<string, unknown>[] {
  return lines.filter((l) => l.text.startsWith(`${prefix} {`)).map((l) => JSON.parse(l.text.slice(prefix.length + 1)));
}

describe.skipIf(!slow)("Xen nested under QEMU: a PVH domU moved by xl with its disk on wanmig", () => {
  test("the domU carries on at B with no verify failure, its last writes on B's image, A's export fenced", async () => {
    const stage = join(dir.path, "stage");
    mkdirSync(stage);
    await sh(["cp", join(REPO, "dist", "wanmig-baseline"), join(stage, "wanmig")]);
    // WANMIG_XEN_DOMU: shell lines that change the domU for an experiment (scripts/xen/dom0-init.sh).
    if (process.env.WANMIG_XEN_DOMU) writeFileSync(join(stage, "xen-test.env"), `${process.env.WANMIG_XEN_DOMU}\n`);
    const data = join(dir.path, "data.img");
    let run!: Awaited<ReturnType<typeof runNested>>;
    let wall = 0;
    let attempt = 1;
    for (; ; attempt++) {
      await sh(["rm", "-f", data]);
      await sh(["truncate", "-s", "1G", data]);
      await sh(["mkfs.ext4", "-q", "-F", "-d", stage, data]);
      const started = Date.now();
      run = await runNested(data, 1_500_000);
      wall = Date.now() - started;
      const has = (s: string) => run.lines.some((l) => l.text.startsWith(s));
      const at = (s: string) => run.lines.findIndex((l) => l.text.startsWith(s));
      const fault = run.lines.findIndex((l) => /\(XEN\) d\d+v\d+ Triple fault/.test(l.text));
      // The one failure run again: the domU triple-faulted inside Xen at A before wanmig's
      // hand-off, so xl could not suspend it ("failed to suspend at sender") and wanmig
      // aborted before its point of no return. What wanmig did is checked first: it exited 5
      // (the domain runs at A) or 6 naming the state the fault left it in (shut down, ---sr-),
      // and A's disk is not fenced. A fault after the hand-off (at B, after xl unpause) is not
      // run again: it fails below.
      const exitAt = at("@@ source-exit ");
      const faultAtA =
        fault >= 0 && exitAt > fault && (has("@@ source-exit 5") || has("@@ source-exit 6")) && run.lines.some((l) => l.text.includes("failed to suspend at sender"));
      if (faultAtA) {
        expect(has("@@ source-mode normal")).toBe(true);
        const where = run.lines[at("@@ domain-at-A")]?.text;
        if (has("@@ source-exit 5")) expect(where).toMatch(/@@ domain-at-A [rb-]+$/);
        else expect(where).toMatch(/@@ domain-at-A ---s[rc]-$/);
      }
      if (!faultAtA || attempt === 3) break;
      const dump = run.lines.slice(fault, fault + 6).map((l) => l.text.replace(/^\(XEN\) /, "")).join(" | ");
      console.log(`xen: run ${attempt}: the domU triple-faulted inside Xen at A before the hand-off; xl could not suspend it, wanmig aborted safely (${run.lines[exitAt].text.slice(3)}, A's disk writable): ${dump}; running again`);
    }
    const { lines, code } = run;
    const text = lines.map((l) => l.text).join("\n");
    const marks = lines.filter((l) => l.text.startsWith("@@ ")).map((l) => l.text);
    if (!marks.some((m) => m.startsWith("@@ all-done"))) throw new Error(`dom0 did not finish (QEMU exit ${code}):\n${text.slice(-6000)}`);
    const fault = lines.findIndex((l) => /\(XEN\) d\d+v\d+ Triple fault/.test(l.text));
    if (fault >= 0) {
      const when = marks.includes("@@ source-exit 0") ? "after wanmig's hand-off" : `before the hand-off, in all ${attempt} runs`;
      throw new Error(`the domU triple-faulted inside Xen ${when}:\n${lines.slice(fault, fault + 16).map((l) => l.text).join("\n")}\n\n${text.slice(-6000)}`);
    }
    expect(marks.filter((m) => m.includes("FAIL")), text.slice(-6000)).toEqual([]);
    expect(marks).toContain("@@ source-exit 0");
    expect(marks).toContain("@@ source-mode fenced");

    const a = consoleLines(lines, "CONA");
    const b = consoleLines(lines, "CONB");
    const failures = guestFailures([...a, ...b]);
    expect(failures).toEqual([]);
    const wa = guestWrites(a);
    const wb = guestWrites(b);
    expect(wb.length).toBeGreaterThan(20); // it carried on at B

    // B's image, read out of the data disk's ext4.
    const dst = join(dir.path, "dst.img");
    await sh(["debugfs", "-R", `dump /dst.img ${dst}`, data]);
    expect(lostWrites(dst, [...wa, ...wb])).toEqual([]);

    const done = events(lines, "SRC").find((e) => e.event === "done")!;
    const paused = events(lines, "SRC").find((e) => e.event === "paused")!;
    const running = events(lines, "DST").find((e) => e.event === "running")!;
    const version = /@@ xen_version (\S+)/.exec(text)?.[1];
    // The guest's own clock (Xen's, which counts the time it was paused) between its last write at A and its first at B.
    const lastA = wa.at(-1)?.up;
    const firstB = wb[0]?.up;
    const gap = lastA !== undefined && firstB !== undefined ? `${Math.round((firstB - lastA) * 1000)} ms` : "not timestamped";
    console.log(
      `xen: Xen ${version}; migration ${done.migrationTimeMs} ms; domain downtime: xl migrate returned -> xl unpause ${(running.at as number) - (paused.at as number)} ms, ` +
        `the guest's write gap ${gap} (its own clock); storage downtime ${done.storageDowntimeMs} ms; ` +
        `verify failures ${failures.length}; guest writes A ${wa.length}, B ${wb.length}; the whole run ${Math.round(wall / 1000)} s (run ${attempt} of at most 3)`,
    );
  }, 1_800_000);
});
