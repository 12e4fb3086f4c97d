// Migration benchmark: a live disk migration between two "hosts" (two network
// namespaces joined by a veth pair), on a LAN and on the paper's WAN, side by side with
// freeze-and-copy and with a standard tool (nbdcopy pulling from qemu-nbd) on the same link.
//
//   npm run bench -- migrate [--scenario loopback,lan,lfn,wan] [--rows live-coalesce,live-paper,live-zstd1,live-zstd19,live-insecure,live-2disks,freeze,nbdcopy,qsd-mirror]
//                            [--image-mib 1024] [--data-mib 300] [--image-kind mixed|os] [--lan-rate 1gbit] [--lan-rtt-ms 0]
//                            [--lfn-rate 1gbit] [--lfn-rtt-ms 100] [--wan-rate 5mbit] [--wan-rtt-ms 100] [--compress zstd|none|…] [--timeout-s S]
//                            [--keep-logs DIR] [--json FILE]
//
// The link: `tc tbf` at the rate on both veth ends (each direction), and latency from
// scripts/bench/lib/delay-proxy.ts (user space; this machine has no netem) in the source's
// namespace, RTT/2 each way; `--lan-rtt-ms 0` (the default) runs the LAN without the
// proxy: the veth's own RTT (~0.05 ms). With the proxy, the source namespace's TCP buffers
// are capped (see tuneTcpBuffers) so loopback does not add a queue a WAN path would not.
// The image: sparse, --image-mib, with --data-mib of data in six extents spread over it,
// half random (incompressible) and half web-server log text (zstd -1 compresses it ~4.5×
// in 64 KiB blocks); with --image-kind os, shared libraries from /usr/lib throughout (zstd
// -1 keeps ~37 % of them, -19 ~27 %). One image per bench run, a sparse copy per row.
// The "VM" is `wanmig workload --pattern static-web`, started 1 s before the source and
// running through the migration (after the fence its writes are refused; then killed).
//
// Physical limit of a scenario (issue 13): on the WAN, the zstd -19 size of the image's data
// (`zstd -19` over all of it, one stream) × 8 / link rate + one RTT; on a fast link, the
// data's own size over the rate; on loopback none (the peers' times instead).
// Targets: migration time ≤ 1.1 × that limit; loopback ≤ 1.0 × nbdcopy; storage downtime on the LAN < 100 ms;
// peak RSS of each wanmig process < 200 MiB. Needs root (ip netns, tc).
//
// The hosts and the link are lib/topology.ts's (shared with the downtime and paper benches);
// the peers' rows are in peers/.

import { $ } from "bun";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { ControlClient } from "../../src/disk/service/control-client.ts";
import { parseRate } from "../../src/net/rate.ts";
import { BUN, BUN_EXE, MAIN, MiB, REPO } from "./lib/constants.ts";
import { buildImage, identical, type ImageKind } from "./lib/images.ts";
import { type Ctx, keepLogs, type RowDef, RowProcs, type RowResult, timeoutMs } from "./lib/migrate-row.ts";
import { foreignProcesses, notable, type Peak, Proc, tail } from "./lib/proc.ts";
import { cleanup, DST_IP, linkTxBytes, netSetup, NS_DST, NS_SRC, proxyArgs, rowHosts, type Scenario, shape, tuneTcpBuffers, unshape } from "./lib/topology.ts";
import { waitUntil } from "./lib/wait.ts";
import { runNbdcopy } from "./peers/nbdcopy.ts";
import { mirrorRow } from "./peers/qsd-mirror.ts";

/** Migration time over the limit: 1.1 on a LAN and a WAN; on a long fat network, at least 0.8 of the link's rate. */
const targetRatio = (sc: Scenario) => (sc.name === "lfn" ? 1 / 0.8 : 1.1);
const TARGET_DOWNTIME_MS = 100;
const TARGET_RSS_MIB = 200;

const ROWS: RowDef[] = [
  { id: "live-coalesce", label: "wanmig live, --deltas coalesce", mode: "live", deltas: "coalesce" },
  { id: "live-paper", label: "wanmig live, --deltas paper", mode: "live", deltas: "paper" },
  { id: "live-zstd1", label: "wanmig live, --compress zstd (level 1 fixed: the old default)", mode: "live", deltas: "coalesce", compress: "zstd" },
  { id: "live-zstd19", label: "wanmig live, --compress zstd:19", mode: "live", deltas: "coalesce", compress: "zstd:19" },
  // The rows above seal every frame (--secret-file); this one does not: what sealing costs.
  { id: "live-insecure", label: "wanmig live, --insecure (frames in the clear)", mode: "live", deltas: "coalesce", insecure: true },
  { id: "live-2disks", label: "wanmig live, the same data as two disks (the image's halves)", mode: "live", deltas: "coalesce", twoDisks: true },
  { id: "freeze", label: "wanmig freeze-and-copy", mode: "freeze-and-copy", deltas: "coalesce" },
  { id: "nbdcopy", label: "nbdcopy ← qemu-nbd (peer)" },
  { id: "qsd-mirror", label: "QEMU live: qemu-storage-daemon blockdev-mirror → qemu-nbd (peer)" },
];

/** This run's scratch directory (the image, each row's hosts): removed at the end. */
let baseDir: string | undefined;

/** Other processes seen during the row under way (foreignProcesses, polled every second). */
const foreign = new Set<string>();
setInterval(() => {
  for (const o of foreignProcesses(baseDir)) foreign.add(o);
}, 1000).unref();

/** The shared cleanup (processes, namespaces), then this run's scratch directory. */
async function cleanupAll(): Promise<void> {
  await cleanup();
  if (baseDir) rmSync(baseDir, { recursive: true, force: true });
}

/** A link slow enough that its limit is the data's zstd -19 size (the issue's WAN rows). */
const isWan = (sc: Scenario) => sc.bps > 0 && sc.bps < 100e6;

// ---- one row ----------------------------------------------------------------------------

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

/** A row of wanmig itself: serve and dest, the delay proxy if the scenario has an RTT, the workload, then the source, timed to its DONE. */
async function runWanmig(sc: Scenario, row: RowDef, ctx: Ctx, dir: string): Promise<RowResult> {
  const r: RowResult = { scenario: sc.name, row: row.id, label: row.label, ok: false, rss: {}, notes: [] };
  const { a, b, image } = await rowHosts(dir, ctx.image);
  const images = row.twoDisks ? await splitInTwo(image) : [image];
  const destImages = images.map((i) => join(b, basename(i)));
  const procs = new RowProcs();
  const start = procs.start.bind(procs);
  try {
    const serve = start("serve", NS_SRC, [BUN, MAIN, "serve", "--name", "vm", ...images.flatMap((i) => ["--image", i]), "--run-dir", a, "--log", "warn"], true);
    const ctl = new ControlClient(join(a, "vm.ctl"));
    await waitUntil(async () => (await ctl.status()).size > 0, "serve's control socket");
    await serve.checkPid(BUN_EXE);
    const destPort = ctx.port++;
    const dest = start("dest", NS_DST, [BUN, MAIN, "dest", "--name", "vm", ...destImages.flatMap((i) => ["--image", i]), "--run-dir", b, "--listen", `${DST_IP}:${destPort}`, ...(row.insecure ? ["--insecure"] : ["--secret-file", ctx.secret]), "--json"], true);
    await dest.waitFor(/listening on \S+:\d+/, "dest to listen");
    await dest.checkPid(BUN_EXE);
    let to = `${DST_IP}:${destPort}`;
    if (sc.rttMs > 0) {
      const port = ctx.port++;
      const proxy = start("delay-proxy", NS_SRC, proxyArgs(sc, `127.0.0.1:${port}`, to));
      await proxy.waitFor(/listening on/, "the delay proxy");
      to = `127.0.0.1:${port}`;
    }
    const vm = start("workload", NS_SRC, [BUN, MAIN, "workload", "--name", "vm", "--run-dir", a, "--pattern", "static-web", "--duration", "3600s", "--json", "--log", "warn"]);
    await Bun.sleep(1000);
    if (vm.proc.exitCode !== null) throw new Error(`the workload exited ${vm.proc.exitCode}:\n${tail(vm.stderr)}`);

    const tx0 = await linkTxBytes();
    const t0 = performance.now();
    const src = start("source", NS_SRC, [BUN, MAIN, "source", "--name", "vm", "--run-dir", a, "--to", to, ...(row.insecure ? ["--insecure"] : ["--secret-file", ctx.secret]), "--json", "--mode", row.mode!, "--deltas", row.deltas!, ...((row.compress ?? ctx.compress) ? ["--compress", (row.compress ?? ctx.compress)!] : [])], true);
    await src.checkPid(BUN_EXE);
    const limit = timeoutMs(sc, ctx);
    const timer = setTimeout(() => src.proc.kill("SIGTERM"), limit);
    const code = await src.proc.exited;
    clearTimeout(timer);
    await Bun.sleep(200); // the last stdout lines
    r.linkTxBytes = (await linkTxBytes()) - tx0;
    r.exitCode = code;
    r.phases = {};
    for (const { t, line } of src.stdoutLines) {
      try {
        const e = JSON.parse(line);
        if (e.event === "phase") r.phases[e.phase] ??= Math.round(t - t0);
        if (e.event === "done") r.done = e;
      } catch {}
    }
    if (code !== 0 || !r.done) {
      r.error = performance.now() - t0 >= limit ? `timed out after ${Math.round(limit / 1000)} s` : `source exited ${code}`;
      r.notes.push(`source stderr:\n${tail(src.stderr)}`, `dest stderr:\n${tail(dest.stderr)}`);
      return r;
    }
    const d = r.done;
    r.migrationTimeS = d.migrationTimeMs! / 1000;
    r.downtimeMs = d.storageDowntimeMs;
    r.wireBytes = d.bytesOnWire;
    r.bulkWireBytes = d.bulkWireBytes;
    r.deltas = d.deltaCount;
    r.deltasSkipped = d.deltasSkipped;
    r.finalDeltas = d.finalDeltas;
    r.throttleSteps = d.throttleSteps;
    r.reconnects = d.reconnects;
    await vm.stop();
    for (const { line } of vm.stdoutLines) if (line.includes('"done"')) r.workload = JSON.parse(line);
    await dest.waitFor(/now serving/, "dest to serve", 10_000).catch((e) => r.notes.push(`dest: ${(e as Error).message}`));
    r.identical = (await Promise.all(images.map((i, k) => identical(i, destImages[k]!)))).every(Boolean);
    r.ok = r.identical;
    if (!r.identical) r.error = "the images differ";
    return r;
  } catch (err) {
    r.error = (err as Error).message;
    return r;
  } finally {
    await procs.finish(ctx, sc, row, r);
    for (const p of procs.all) if (["serve", "source", "dest", "workload"].includes(p.name)) r.notes.push(...notable(p.name, p.stderr));
  }
}

/**
 * The live peer: QEMU's own storage migration (peers/qsd-mirror.ts, copy-mode background, QEMU's
 * default), under the same static-web workload, which talks to qemu-storage-daemon.
 */
async function runQsdMirror(sc: Scenario, row: RowDef, ctx: Ctx, dir: string): Promise<RowResult> {
  const r: RowResult = { scenario: sc.name, row: row.id, label: row.label, ok: false, rss: {}, notes: [] };
  const tx0 = await linkTxBytes();
  const m = await mirrorRow({
    sc,
    dir,
    template: ctx.image,
    sizeBytes: ctx.imageMiB * MiB,
    nextPort: () => ctx.port++,
    timeoutMs: timeoutMs(sc, ctx),
    copyMode: "background",
    writer: (runDir) => new Proc("workload", NS_SRC, [BUN, MAIN, "workload", "--name", "vm", "--run-dir", runDir, "--pattern", "static-web", "--duration", "3600s", "--json", "--log", "error"], false),
  });
  r.linkTxBytes = (await linkTxBytes()) - tx0;
  for (const p of m.procs) if (p.watchRss) r.rss[p.name] = p.peak;
  keepLogs(ctx, sc, row, m.procs);
  r.ok = m.ok;
  r.error = m.error;
  r.identical = m.ok;
  r.migrationTimeS = m.migrationS;
  r.downtimeMs = m.downtimeMs;
  return r;
}

// ---- report -----------------------------------------------------------------------------

const mib = (b?: number) => (b === undefined ? "–" : (b / MiB).toFixed(1));
const peakMiB = (p?: Peak) => (p ? Math.max(p.polledKiB, p.hwmKiB) / 1024 : NaN);
const mark = (ok: boolean) => (ok ? "PASS" : "MISS");

function fmtRate(bps: number): string {
  if (!bps) return "uncapped";
  return bps >= 1e9 ? `${bps / 1e9} Gbit/s` : bps >= 1e6 ? `${bps / 1e6} Mbit/s` : `${bps / 1e3} kbit/s`;
}

// ---- the run ----------------------------------------------------------------------------

type Options = ReturnType<typeof parseOptions>;
type Image = Awaited<ReturnType<typeof buildImage>>;

function parseOptions(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      scenario: { type: "string", default: "lan,wan" },
      rows: { type: "string", default: "live-coalesce,live-paper,freeze,nbdcopy" },
      "image-mib": { type: "string", default: "1024" },
      "data-mib": { type: "string", default: "300" },
      "lan-rate": { type: "string", default: "1gbit" },
      "lan-rtt-ms": { type: "string", default: "0" },
      "lfn-rate": { type: "string", default: "1gbit" },
      "lfn-rtt-ms": { type: "string", default: "100" },
      "wan-rate": { type: "string", default: "5mbit" },
      "wan-rtt-ms": { type: "string", default: "100" },
      "timeout-s": { type: "string" },
      "keep-logs": { type: "string" },
      compress: { type: "string" },
      "image-kind": { type: "string", default: "mixed" },
      json: { type: "string" },
    },
  });
  const all: Record<string, Scenario> = {
    // The veth without tbf or proxy: whatever the CPUs can move (bps 0: no physical limit).
    loopback: { name: "loopback", rateSpec: "uncapped", bps: 0, rttMs: 0 },
    lan: { name: "lan", rateSpec: values["lan-rate"]!, bps: parseRate(values["lan-rate"]!) * 8, rttMs: Number(values["lan-rtt-ms"]) },
    // A long fat network: one TCP stream's window, not the rate, is the bound there.
    lfn: { name: "lfn", rateSpec: values["lfn-rate"]!, bps: parseRate(values["lfn-rate"]!) * 8, rttMs: Number(values["lfn-rtt-ms"]) },
    wan: { name: "wan", rateSpec: values["wan-rate"]!, bps: parseRate(values["wan-rate"]!) * 8, rttMs: Number(values["wan-rtt-ms"]) },
  };
  const scenarios = values.scenario!.split(",").map((s) => {
    const sc = all[s.trim()];
    if (!sc) throw new Error(`unknown scenario ${s}; use loopback, lan, lfn, wan`);
    return sc;
  });
  const rows = values.rows!.split(",").map((s) => {
    const row = ROWS.find((r) => r.id === s.trim());
    if (!row) throw new Error(`unknown row ${s}; use ${ROWS.map((r) => r.id).join(", ")}`);
    return row;
  });
  const imageKind = values["image-kind"] as ImageKind;
  if (imageKind !== "mixed" && imageKind !== "os") throw new Error(`unknown --image-kind ${imageKind}; use mixed or os`);
  const imageMiB = Number(values["image-mib"]);
  const dataMiB = Number(values["data-mib"]);
  return { values, scenarios, rows, imageKind, imageMiB, dataMiB };
}

/** The scratch directory, the image and the secret; what is measured goes into `meta` (image, wanmig). */
async function prepare(o: Options, meta: Record<string, unknown>): Promise<{ ctx: Ctx; img: Image }> {
  const { values, imageMiB, dataMiB, imageKind } = o;
  await $`bash ${join(REPO, "scripts", "install-deps.sh")} core guest`; // nbdcopy, qemu-nbd, zstd; qemu-storage-daemon
  baseDir = mkdtempSync("/tmp/wanmig-bench-migrate-");
  const image = join(baseDir, "image.raw");
  const secret = join(baseDir, "secret");
  writeFileSync(secret, randomBytes(24).toString("hex"), { mode: 0o600 });
  console.error(`image: ${imageMiB} MiB sparse, ${dataMiB} MiB of data (${imageKind === "os" ? "shared libraries" : "half random, half log text"}) in ${baseDir}`);
  const img = await buildImage(image, imageMiB, dataMiB, imageKind, o.scenarios.some(isWan));
  console.error(`  extents: ${img.extents.map((e) => `${e.kind} ${e.mib.toFixed(0)} MiB @ ${e.offsetMiB} MiB`).join(", ")}${img.zstd19Bytes ? `; zstd -19 of the data: ${mib(img.zstd19Bytes)} MiB` : ""}`);
  meta.image = { imageMiB, dataMiB, kind: imageKind, ...img };
  // The wanmig measured: HEAD, and a hash of uncommitted changes under src/ if any.
  const diff = await $`git diff HEAD -- src`.cwd(REPO).nothrow().quiet();
  meta.wanmig = { head: (await $`git rev-parse --short HEAD`.cwd(REPO).nothrow().text()).trim(), srcDiffSha256: diff.stdout.length ? new Bun.CryptoHasher("sha256").update(diff.stdout).digest("hex").slice(0, 16) : "" };
  const ctx: Ctx = { image, imageMiB, dataMiB, secret, timeoutS: values["timeout-s"] ? Number(values["timeout-s"]) : undefined, port: 7100, logDir: values["keep-logs"], compress: values.compress };
  return { ctx, img };
}

/** One scenario: the link shaped (and the source's TCP buffers), then each row over it. */
async function runScenario(sc: Scenario, rows: RowDef[], ctx: Ctx, meta: Record<string, unknown>, results: RowResult[]): Promise<void> {
  const tbf = sc.bps ? await shape(sc.bps) : await unshape();
  const tcp = await tuneTcpBuffers(sc);
  meta[sc.name] = { bps: sc.bps, rttMs: sc.rttMs, tbf, srcNamespaceTcp: tcp, proxy: sc.rttMs > 0 ? `delay-proxy ${sc.rttMs / 2} ms each way` : "none" };
  console.error(`\n== ${sc.name.toUpperCase()}: ${fmtRate(sc.bps)}, RTT ${sc.rttMs} ms (${sc.rttMs > 0 ? `delay proxy, ${sc.rttMs / 2} ms each way` : "no proxy"}); ${tbf} on both ends; source namespace ${tcp}`);
  for (const row of rows) results.push(await runRow(sc, row, ctx));
}

/** One row in its own directory, with the load and the other processes seen meanwhile; its figures on stderr. */
async function runRow(sc: Scenario, row: RowDef, ctx: Ctx): Promise<RowResult> {
  const dir = mkdtempSync(join(baseDir!, `${sc.name}-${row.id}-`));
  console.error(`-- ${row.label} …`);
  foreign.clear();
  const load0 = readFileSync("/proc/loadavg", "utf8").split(" ")[0];
  const r = row.mode ? await runWanmig(sc, row, ctx, dir) : row.id === "qsd-mirror" ? await runQsdMirror(sc, row, ctx, dir) : await runNbdcopy(sc, row, ctx, dir);
  r.load = `${load0} → ${readFileSync("/proc/loadavg", "utf8").split(" ")[0]}`;
  for (const o of foreignProcesses(baseDir)) foreign.add(o);
  if (foreign.size) r.notes.push(`NOISY: ${foreign.size} other processes shared the CPUs during this row, e.g. ${[...foreign][0]}`);
  rmSync(dir, { recursive: true, force: true });
  const rss = Object.entries(r.rss).map(([k, v]) => `${k} ${peakMiB(v).toFixed(0)}`).join(", ");
  const cpu = Object.entries(r.rss).map(([k, v]) => `${k} ${v.cpuS.toFixed(1)}`).join(", ");
  console.error(
    r.ok
      ? `   ${r.migrationTimeS!.toFixed(2)} s, downtime ${r.downtimeMs!.toFixed(0)} ms, ${mib(r.wireBytes)} MiB sent (link ${mib(r.linkTxBytes)} MiB); peak RSS MiB: ${rss}; CPU s: ${cpu}`
      : `   FAILED: ${r.error}`,
  );
  for (const n of r.notes) console.error(`   ${n.replace(/\n/g, "\n     ")}`);
  return r;
}

// ---- tables -----------------------------------------------------------------------------

interface Report {
  lines: string[];
  targets: { target: string; figure: string; pass: boolean | undefined }[];
  summary: Record<string, unknown>;
}

/** A row of a scenario's table; `ratio`: its migration time over the scenario's limit. */
function tableRow(sc: Scenario, r: RowResult, ratio: number | undefined): string {
  const isTargetRow = r.row === "live-coalesce";
  const ratioCell = ratio === undefined ? "–" : `${ratio.toFixed(2)}×${isTargetRow ? ` ${mark(ratio <= targetRatio(sc))}` : ""}`;
  const downCell = `${r.downtimeMs!.toFixed(0)} ms${isTargetRow && sc.name === "lan" ? ` ${mark(r.downtimeMs! < TARGET_DOWNTIME_MS)}` : ""}`;
  const rssCell = r.row === "nbdcopy"
    ? `qemu-nbd ${peakMiB(r.rss["qemu-nbd"]).toFixed(0)} / – / nbdcopy ${peakMiB(r.rss.nbdcopy).toFixed(0)} MiB`
    : r.row === "qsd-mirror"
      ? `qsd ${peakMiB(r.rss.qsd).toFixed(0)} / – / qemu-nbd ${peakMiB(r.rss["qemu-nbd"]).toFixed(0)} MiB`
    : (() => {
        const v = ["serve", "source", "dest"].map((k) => peakMiB(r.rss[k]));
        return `${v.map((x) => x.toFixed(0)).join(" / ")} MiB ${mark(v.every((x) => x < TARGET_RSS_MIB))}`;
      })();
  return `| ${r.label} | ${r.migrationTimeS!.toFixed(2)} s | ${ratioCell} | ${downCell}${r.row === "nbdcopy" ? " (not live)" : ""} | ${r.wireBytes === undefined ? "–" : `${mib(r.wireBytes)} MiB`} | ${r.bulkWireBytes === undefined ? "–" : `${mib(r.bulkWireBytes)} MiB`} | ${mib(r.linkTxBytes)} MiB | ${r.deltas === undefined ? "–" : `${r.deltas} / ${r.deltasSkipped} / ${r.finalDeltas}`} | ${r.throttleSteps ?? "–"} | ${rssCell} | ${r.identical ? "identical" : "DIFFER"} |`;
}

/** A scenario's table, its notes, and its targets (into `rep`). */
function scenarioTable(rep: Report, o: Options, sc: Scenario, rs: RowResult[], img: Image | undefined, meta: Record<string, unknown>): void {
  const { lines, targets } = rep;
  // The issue's limits: on the WAN, the data's zstd -19 size over the link; on a fast
  // link, the data's own size (compression may beat it); on loopback, none (peers instead).
  const wan = isWan(sc);
  const limitBytes = wan ? img?.zstd19Bytes : o.dataMiB * MiB;
  const limitS = sc.bps && limitBytes ? (limitBytes * 8) / sc.bps + sc.rttMs / 1000 : undefined;
  rep.summary[sc.name] = { ...(meta[sc.name] as object), physicalLimitS: limitS, limitBytes };
  lines.push(
    `### ${sc.name.toUpperCase()}: ${fmtRate(sc.bps)}, RTT ${sc.rttMs} ms${sc.rttMs ? "" : " (no delay proxy)"}; ${o.imageMiB} MiB image, ${o.dataMiB} MiB ${o.imageKind} data, static-web workload`,
    limitS
      ? `physical limit: ${mib(limitBytes)} MiB (${wan ? "the data at zstd -19" : "the data"}) × 8 / ${fmtRate(sc.bps)} + ${sc.rttMs} ms = ${limitS.toFixed(2)} s`
      : "physical limit: none (uncapped); the measure is the fastest peer's time",
    "",
    "| row | migration | × limit | storage downtime | sent (app) | bulk on wire | link tx | deltas sent / skipped / after fence | throttle | peak RSS serve / source / dest | images |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  );
  for (const r of rs) {
    if (!r.ok) {
      lines.push(`| ${r.label} | FAILED: ${r.error?.split("\n")[0]} |||||||||`);
      continue;
    }
    const ratio = limitS ? r.migrationTimeS! / limitS : undefined;
    const isTargetRow = r.row === "live-coalesce";
    lines.push(tableRow(sc, r, ratio));
    if (isTargetRow && ratio !== undefined) targets.push({ target: `${sc.name} migration time ≤ ${targetRatio(sc).toFixed(2)} × ${wan ? "the zstd -19 limit" : "the data over the link"}`, figure: `${r.migrationTimeS!.toFixed(1)} s = ${ratio.toFixed(2)} × ${limitS!.toFixed(1)} s`, pass: ratio <= targetRatio(sc) });
    if (isTargetRow && sc.name === "lan") targets.push({ target: `LAN storage downtime < ${TARGET_DOWNTIME_MS} ms`, figure: `${r.downtimeMs} ms`, pass: r.downtimeMs! < TARGET_DOWNTIME_MS });
  }
  const live = rs.find((r) => r.row === "live-coalesce" && r.ok);
  const peer = rs.filter((r) => (r.row === "nbdcopy" || r.row === "qsd-mirror") && r.ok).sort((x, y) => x.migrationTimeS! - y.migrationTimeS!)[0];
  if (!sc.bps && live && peer) {
    const ratio = live.migrationTimeS! / peer.migrationTimeS!;
    targets.push({ target: "loopback migration ≤ 1.0 × the fastest peer's time", figure: `${live.migrationTimeS!.toFixed(2)} s = ${ratio.toFixed(2)} × ${peer.migrationTimeS!.toFixed(2)} s (${peer.row})`, pass: ratio <= 1 });
  }
  for (const r of rs) for (const n of r.notes) lines.push(`- ${r.row}: ${n.replace(/\s*\n\s*/g, " | ").slice(0, 300)}`);
  lines.push("");
}

/** Every scenario's table, then the targets' table and what the columns mean. */
function report(o: Options, results: RowResult[], img: Image | undefined, meta: Record<string, unknown>): Report {
  const rep: Report = { lines: [], targets: [], summary: {} };
  const { lines, targets } = rep;
  for (const sc of o.scenarios) scenarioTable(rep, o, sc, results.filter((r) => r.scenario === sc.name), img, meta);
  const wanmigRss = results.filter((r) => r.row !== "nbdcopy" && Object.keys(r.rss).length);
  if (wanmigRss.length) {
    let worst = { v: 0, who: "" };
    for (const r of wanmigRss)
      for (const k of ["serve", "source", "dest"]) {
        const v = peakMiB(r.rss[k]);
        if (v > worst.v) worst = { v, who: `${k}, ${r.scenario} ${r.row}` };
      }
    targets.push({ target: `peak RSS of each wanmig process < ${TARGET_RSS_MIB} MiB (${o.imageMiB} MiB image)`, figure: `max ${worst.v.toFixed(0)} MiB (${worst.who})`, pass: worst.v < TARGET_RSS_MIB });
  }
  lines.push("| target | figure | |", "|---|---|---|");
  for (const t of targets) lines.push(`| ${t.target} | ${t.figure} | ${t.pass === undefined ? "n/a" : mark(t.pass)} |`);
  lines.push(
    "",
    "migration: source start to DONE (nbdcopy: wall clock of the copy). storage downtime: fence to DONE (freeze-and-copy and nbdcopy: the whole copy). " +
      "sent (app): bytes the source wrote to its socket (nbdcopy: bytes through the delay proxy, both ways). link tx: the source veth's tx byte counter (IP packets; with GSO, about one header per 64 KiB). " +
      "peak RSS: max of VmRSS polled every 100 ms and of VmHWM (read at each poll and before the kill).",
  );
  return rep;
}

export async function main(argv: string[]): Promise<void> {
  const o = parseOptions(argv);
  if (process.getuid?.() !== 0) throw new Error("needs root (ip netns, tc)");

  const onSignal = () => {
    console.error("\ninterrupted: cleaning up");
    void cleanupAll().then(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const results: RowResult[] = [];
  const meta: Record<string, unknown> = {};
  let img: Image | undefined;
  try {
    const prepared = await prepare(o, meta);
    img = prepared.img;
    await netSetup();
    for (const sc of o.scenarios) await runScenario(sc, o.rows, prepared.ctx, meta, results);
  } finally {
    await cleanupAll();
  }

  const { lines, targets, summary } = report(o, results, img, meta);
  console.log(lines.join("\n"));
  if (o.values.json) await Bun.write(o.values.json, JSON.stringify({ date: new Date().toISOString(), wanmig: meta.wanmig, image: meta.image, scenarios: summary, targets, results }, null, 2));
}
