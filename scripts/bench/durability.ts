// What the durable markers cost (issue 10), side by side with an earlier binary in one run:
//  - the control calls that now write IMAGE.wanmig.json with fsync before they answer
//    (start recording, fence, unfence, stop), on a real disk, median of N;
//  - a storage-only live migration on loopback under a random 4 KiB writer with
//    incompressible data for its first seconds (a writer that never stops would not let
//    either build converge: that is issue 12's), then a gentle one to the end: migration
//    time, storage downtime and its fence part, median of R.
//
//   npm run bench -- durability --baseline OLD_BIN [--calls 30] [--runs 5] [--size-mib 256]
//
// Build the baseline from an earlier commit (git worktree add /tmp/base COMMIT; cd /tmp/base;
// bun build --compile src/main.ts --outfile /tmp/wanmig-base).

import { $, type Subprocess } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ControlClient } from "../../src/disk/service/control-client.ts";
import { stressWriter } from "../../test/helpers/stress-writer.ts";
import { REPO } from "./lib/constants.ts";

async function serve(bin: string, dir: string, name: string, image: string): Promise<{ proc: Subprocess; ctl: ControlClient; socket: string }> {
  const proc = Bun.spawn([bin, "serve", "--image", image, "--name", name, "--run-dir", dir, "--log", "warn"], { stderr: "inherit" });
  const ctl = new ControlClient(join(dir, `${name}.ctl`), { retryMs: 10_000 });
  await ctl.status();
  return { proc, ctl, socket: join(dir, `${name}.nbd`) };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function timeCalls(bin: string, dir: string, calls: number): Promise<Record<string, number>> {
  const image = join(dir, "calls.img");
  await $`truncate -s 64M ${image}`;
  const { proc, ctl } = await serve(bin, dir, "calls", image);
  const t: Record<string, number[]> = { "start recording": [], fence: [], unfence: [], "stop recording": [] };
  const timed = async (k: string, f: () => Promise<unknown>) => {
    const a = performance.now();
    await f();
    t[k]!.push(performance.now() - a);
  };
  try {
    for (let i = 0; i < calls; i++) {
      await timed("start recording", () => ctl.startRecording());
      await timed("fence", () => ctl.fence());
      // The old API unfenced with {"fenced": false}; the new one takes a reason too.
      await timed("unfence", () => ctl.unfence("bench"));
      await timed("stop recording", () => ctl.stopRecording());
      await Bun.sleep(2); // earlier builds named two logs started in one ms alike
    }
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
    await $`rm -f ${dir}/calls.*.deltas`.nothrow();
  }
  return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)]));
}

async function migrateOnce(bin: string, dir: string, sizeMiB: number, run: number): Promise<Record<string, number>> {
  const a = join(dir, `A${run}`);
  const b = join(dir, `B${run}`);
  await $`mkdir -p ${a} ${b}`;
  const image = join(a, "vm.img");
  await $`truncate -s ${sizeMiB}M ${image}`;
  await $`head -c ${Math.floor(sizeMiB / 2)}M /dev/urandom | dd of=${image} conv=notrunc status=none`;
  const { proc: srv, socket } = await serve(bin, a, "vm", image);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const dst = Bun.spawn([bin, "dest", "--name", "vm", "--image", join(b, "vm.img"), "--run-dir", b, "--listen", `127.0.0.1:${port}`, "--insecure", "--log", "warn"], { stderr: "inherit" });
  await Bun.sleep(500);
  let w = await stressWriter(socket, { pattern: "random4k", bytes: 32 * 1024 * 1024 });
  const calm = setTimeout(async () => {
    await w.stop();
    // From here on about 400 writes a second: the hand-off always has a few in flight.
    w = await stressWriter(socket, { pattern: "random4k", bytes: 32 * 1024 * 1024, pauseMs: 2 });
  }, 3000);
  try {
    const out = await $`${bin} source --name vm --run-dir ${a} --to 127.0.0.1:${port} --insecure --json --log warn`.text();
    clearTimeout(calm);
    const done = out.trim().split("\n").map((l) => JSON.parse(l)).find((e) => e.event === "done");
    return { migrationMs: done.migrationTimeMs, storageDowntimeMs: done.storageDowntimeMs, fenceAndLastDeltasMs: done.storageDowntimeParts?.fenceAndLastDeltasMs ?? NaN };
  } finally {
    await w.stop();
    srv.kill("SIGTERM");
    dst.kill("SIGTERM");
    await Promise.all([srv.exited, dst.exited]);
    rmSync(a, { recursive: true, force: true });
    rmSync(b, { recursive: true, force: true });
  }
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { baseline: { type: "string" }, calls: { type: "string", default: "30" }, runs: { type: "string", default: "5" }, "size-mib": { type: "string", default: "256" } },
  });
  if (!values.baseline) throw new Error("--baseline BIN: the earlier wanmig binary to compare with");
  await $`bun ${join(REPO, "scripts", "build.ts")}`.cwd(REPO);
  const bins: [string, string][] = [
    ["this build", join(REPO, "dist", "wanmig")],
    ["baseline", values.baseline],
  ];
  // A real disk, not a tmpfs: fsync must cost what it costs under a VM's image.
  const dir = mkdtempSync(join("/var/tmp", "wanmig-bench-durability-"));
  try {
    const calls: Record<string, Record<string, number>> = {};
    for (const [label, bin] of bins) calls[label] = await timeCalls(bin, dir, Number(values.calls));
    const runs: Record<string, Record<string, number>[]> = { "this build": [], baseline: [] };
    for (let r = 0; r < Number(values.runs); r++) for (const [label, bin] of bins) runs[label]!.push(await migrateOnce(bin, dir, Number(values["size-mib"]), r));
    const lines = ["| control call (median ms) | this build | baseline |", "|---|---|---|"];
    for (const k of Object.keys(calls["this build"]!)) lines.push(`| ${k} | ${calls["this build"]![k]!.toFixed(2)} | ${calls.baseline![k]!.toFixed(2)} |`);
    lines.push("", `| migration under a random 4k writer (median of ${values.runs}) | this build | baseline | ratio |`, "|---|---|---|---|");
    for (const k of ["migrationMs", "storageDowntimeMs", "fenceAndLastDeltasMs"]) {
      const m = (label: string) => median(runs[label]!.map((x) => x[k]!));
      lines.push(`| ${k} | ${m("this build")} | ${m("baseline")} | ${(m("this build") / m("baseline")).toFixed(2)}× |`);
    }
    console.log(lines.join("\n"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
