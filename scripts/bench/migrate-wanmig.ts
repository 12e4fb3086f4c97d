// A wanmig row of the migrate bench: serve and dest on the two hosts, the destination
// listening on the scenario's path (the veth, or its end of the link emulator), the
// static-web workload, then the source, timed to its DONE; the images compared after.

import { $ } from "bun";
import { basename, join } from "node:path";
import { ControlClient } from "../../src/disk/service/control-client.ts";
import { BUN, BUN_EXE, MAIN, MiB } from "./lib/constants.ts";
import { identical } from "./lib/images.ts";
import { type Ctx, judgeIdentical, type RowDef, RowProcs, type RowResult, timeoutMs } from "./lib/migrate-row.ts";
import { notable, type Proc, tail } from "./lib/proc.ts";
import { linkTxBytes, NS_DST, NS_SRC, pathOf, rowHosts, type Scenario } from "./lib/topology.ts";
import { waitUntil } from "./lib/wait.ts";

/** Cuts `image` in two at half its size (MiB-aligned): it keeps the first half, data.img beside it gets the second, both sparse. */
async function splitInTwo(image: string): Promise<string[]> {
  const size = Number((await $`stat -c %s ${image}`.text()).trim());
  const half = Math.floor(size / 2 / MiB) * MiB;
  const second = join(image, "..", "data.img");
  await $`dd if=${image} of=${second} bs=1M skip=${half / MiB} conv=sparse status=none`;
  await $`truncate -s ${half} ${image}`;
  await $`sync`;
  return [image, second];
}

/** How the ends trust each other: a shared secret (sealed frames), TLS certificates, or nothing. */
function authFlags(row: RowDef, ctx: Ctx, end: "source" | "dest"): string[] {
  if (row.auth === "insecure") return ["--insecure"];
  if (row.auth === "tls") {
    if (!ctx.tls) throw new Error("no TLS certificates were made for this run");
    return ctx.tls[end];
  }
  return ["--secret-file", ctx.secret];
}

/** The source's command line; --streams only when the bench's flag names a value (`--streams ""`: the product's default). */
function sourceArgs(row: RowDef, ctx: Ctx, runDir: string, to: string): string[] {
  const compress = row.compress ?? ctx.compress;
  return [
    BUN, MAIN, "source", "--name", "vm", "--run-dir", runDir, "--to", to, ...authFlags(row, ctx, "source"), "--json", "--mode", row.mode!, "--deltas", row.deltas!,
    ...(compress ? ["--compress", compress] : []),
    ...(ctx.streams ? ["--streams", ctx.streams] : []),
  ];
}

interface Hosts {
  dest: Proc;
  vm: Proc;
  /** The destination's address, as the source is to name it. */
  to: string;
}

/** serve at A, dest at B listening on the path, and the VM's workload at A (1 s ahead of the source). */
async function startHosts(sc: Scenario, row: RowDef, ctx: Ctx, procs: RowProcs, at: { a: string; b: string; images: string[]; destImages: string[] }): Promise<Hosts> {
  const start = procs.start.bind(procs);
  const serve = start("serve", NS_SRC, [BUN, MAIN, "serve", "--name", "vm", ...at.images.flatMap((i) => ["--image", i]), "--run-dir", at.a, "--log", "warn"], true);
  const ctl = new ControlClient(join(at.a, "vm.ctl"));
  await waitUntil(async () => (await ctl.status()).size > 0, "serve's control socket");
  await serve.checkPid(BUN_EXE);
  const to = `${pathOf(sc).dst}:${ctx.port++}`;
  const dest = start("dest", NS_DST, [BUN, MAIN, "dest", "--name", "vm", ...at.destImages.flatMap((i) => ["--image", i]), "--run-dir", at.b, "--listen", to, ...authFlags(row, ctx, "dest"), "--json"], true);
  await dest.waitFor(/listening on \S+:\d+/, "dest to listen");
  await dest.checkPid(BUN_EXE);
  const vm = start("workload", NS_SRC, [BUN, MAIN, "workload", "--name", "vm", "--run-dir", at.a, "--pattern", "static-web", "--duration", "3600s", "--json", "--log", "warn"]);
  await Bun.sleep(1000);
  if (vm.proc.exitCode !== null) throw new Error(`the workload exited ${vm.proc.exitCode}:\n${tail(vm.stderr)}`);
  return { dest, vm, to };
}

/** The source, run to its exit (or killed at the row's limit); its phases and DONE into `r`. Whether it finished. */
async function runSource(sc: Scenario, row: RowDef, ctx: Ctx, procs: RowProcs, a: string, h: Hosts, r: RowResult): Promise<boolean> {
  const tx0 = await linkTxBytes(sc);
  const t0 = performance.now();
  const src = procs.start("source", NS_SRC, sourceArgs(row, ctx, a, h.to), true);
  await src.checkPid(BUN_EXE);
  const limit = timeoutMs(sc, ctx);
  const timer = setTimeout(() => src.proc.kill("SIGTERM"), limit);
  const code = await src.proc.exited;
  clearTimeout(timer);
  await Bun.sleep(200); // the last stdout lines
  r.linkTxBytes = (await linkTxBytes(sc)) - tx0;
  r.exitCode = code;
  r.phases = {};
  for (const { t, line } of src.stdoutLines) {
    try {
      const e = JSON.parse(line);
      if (e.event === "phase") r.phases[e.phase] ??= Math.round(t - t0);
      if (e.event === "done") r.done = e;
    } catch {}
  }
  if (code === 0 && r.done) return true;
  r.error = performance.now() - t0 >= limit ? `timed out after ${Math.round(limit / 1000)} s` : `source exited ${code}`;
  r.notes.push(`source stderr:\n${tail(src.stderr)}`, `dest stderr:\n${tail(h.dest.stderr)}`);
  return false;
}

/** The source's DONE figures into the row. */
function takeDone(r: RowResult, ctx: Ctx): void {
  const d = r.done!;
  r.migrationTimeS = d.migrationTimeMs! / 1000;
  r.throughputBps = (ctx.dataBytes * 8) / r.migrationTimeS;
  r.downtimeMs = d.storageDowntimeMs;
  r.wireBytes = d.bytesOnWire;
  r.bulkWireBytes = d.bulkWireBytes;
  r.deltas = d.deltaCount;
  r.deltasSkipped = d.deltasSkipped;
  r.finalDeltas = d.finalDeltas;
  r.throttleSteps = d.throttleSteps;
  r.reconnects = d.reconnects;
  r.streams = d.streams;
}

export async function runWanmig(sc: Scenario, row: RowDef, ctx: Ctx, dir: string): Promise<RowResult> {
  const r: RowResult = { scenario: sc.name, row: row.id, label: row.label, ok: false, rss: {}, notes: [] };
  const { a, b, image } = await rowHosts(dir, ctx.image);
  const images = row.twoDisks ? await splitInTwo(image) : [image];
  const destImages = images.map((i) => join(b, basename(i)));
  const procs = new RowProcs();
  await procs.guard(ctx, sc, row, r, async () => {
    const h = await startHosts(sc, row, ctx, procs, { a, b, images, destImages });
    if (!(await runSource(sc, row, ctx, procs, a, h, r))) return;
    takeDone(r, ctx);
    await h.vm.stop();
    for (const { line } of h.vm.stdoutLines) if (line.includes('"done"')) r.workload = JSON.parse(line);
    await h.dest.waitFor(/now serving/, "dest to serve", 10_000).catch((e) => r.notes.push(`dest: ${(e as Error).message}`));
    judgeIdentical(r, await Promise.all(images.map((i, k) => identical(i, destImages[k]!))));
  });
  for (const p of procs.all) if (["serve", "source", "dest", "workload"].includes(p.name)) r.notes.push(...notable(p.name, p.stderr));
  return r;
}
