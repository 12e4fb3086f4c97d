// Migration benchmark: a live disk migration between two "hosts" (two network namespaces),
// over paths from loopback to the paper's WAN, side by side with the path's ceiling
// (iperf3), freeze-and-copy and the standard tools (nbdcopy from qemu-nbd, QEMU's mirror)
// on the same path in the same run.
//
//   npm run bench -- migrate [--scenario lan,lfn,lfn20,lfnloss,wan,loopback]
//        [--rows iperf3-1,iperf3-n,live-coalesce,live-tls,live-insecure,live-paper,live-zstd1,live-zstd19,live-2disks,freeze,nbdcopy,qsd-mirror]
//        [--image-mib 1024] [--data-mib 300] [--image-kind mixed|os|random] [--compress zstd|none|…] [--streams auto]
//        [--NAME-rate R] [--NAME-rtt-ms N] [--NAME-loss P] (NAME: lan, lfn, lfn20, lfnloss, wan; P a probability: 0.001 is 0.1 %)
//        [--queue-ms 200] [--iperf-streams 4] [--iperf-s 10] [--timeout-s S] [--keep-logs DIR] [--json FILE]
//
// The path (lib/topology.ts): every scenario with a round trip runs through the link
// emulator (lib/link-emulator.ts: TUN devices, each IP packet delayed half the round trip
// each way behind the rate, with random loss and a tail-drop queue of --queue-ms), so TCP
// runs end to end and meets its window limits as on a real path; the rows talk to the
// emulator's addresses. `loopback` is the bare veth (no shaping); a scenario given
// `--NAME-rtt-ms 0` runs over the veth shaped by tbf at its rate. Every row of a scenario
// runs on the same path; the namespaces' TCP buffers are the kernel's defaults.
//
// Scenarios and their targets (migrate-scenarios.ts; the sealed wanmig row, live-coalesce):
//   lan      100 Mbit/s, 50 ms, mixed data          throughput ≥ 0.95 × the link
//   lfn      1 Gbit/s, 100 ms, random data          ≥ 0.8 × the link, and ≥ the best peer
//   lfn20    1 Gbit/s, 20 ms, random data           ≥ 0.9 × the link
//   lfnloss  1 Gbit/s, 100 ms, 0.1 % loss, random   ≥ 0.6 × the link
//   wan      5 Mbit/s, 100 ms, OS-like image        migration time ≤ 1.1 × the zstd -19 limit
//   loopback uncapped veth, mixed data               ≤ 1.0 × the fastest peer's time
// (--image-kind gives every scenario the same kind.) Throughput: the image's data over the
// migration time. The zstd -19 limit: `zstd -19` over all the data (one stream) × 8 / rate
// + one RTT. Also peak RSS of each wanmig process < 200 MiB.
//
// The image: sparse, --image-mib, with --data-mib of data in six extents spread over it:
// random (incompressible), mixed (half random, half web-server log text that zstd -1
// compresses ~4.5× in 64 KiB blocks), or os (shared libraries from /usr/lib: zstd -1 keeps
// ~37 %, -19 ~27 %). One image per kind per run, a sparse copy per row. The "VM" is
// `wanmig workload --pattern static-web`, started 1 s before the source and running through
// the migration. wanmig rows seal their frames with a secret (--secret-file), or use --tls
// (certificates made for the run, lib/tls-pki.ts), or --insecure; each passes `--streams`
// from the bench's --streams (default auto; `--streams ""` passes none). Needs root.

import { $ } from "bun";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { BUN, MAIN, MiB, REPO } from "./lib/constants.ts";
import { buildImage, IMAGE_KINDS, type ImageKind } from "./lib/images.ts";
import { type Ctx, keepLogs, type RowDef, type RowResult, timeoutMs } from "./lib/migrate-row.ts";
import { foreignProcesses, Proc } from "./lib/proc.ts";
import { cleanup, DST_IP, EMU_DST_IP, linkDown, linkTxBytes, linkUp, netSetup, NS_SRC, tcpMem } from "./lib/topology.ts";
import { makeTlsPki } from "./lib/tls-pki.ts";
import { fmtRate, type ImageFacts, peakMiB, report } from "./migrate-report.ts";
import { type MigrateScenario, scenario, scenarioOptions } from "./migrate-scenarios.ts";
import { runWanmig } from "./migrate-wanmig.ts";
import { runIperf3 } from "./peers/iperf3.ts";
import { runNbdcopy } from "./peers/nbdcopy.ts";
import { mirrorRow } from "./peers/qsd-mirror.ts";

const ROWS: RowDef[] = [
  { id: "iperf3-1", label: "iperf3, 1 TCP stream", kind: "iperf3", streams: "one" },
  { id: "iperf3-n", label: "iperf3, --iperf-streams TCP streams", kind: "iperf3", streams: "many" },
  { id: "live-coalesce", label: "wanmig live, sealed (--secret-file; defaults)", kind: "wanmig", mode: "live", deltas: "coalesce" },
  { id: "live-tls", label: "wanmig live, --tls (certificates)", kind: "wanmig", mode: "live", deltas: "coalesce", auth: "tls" },
  { id: "live-insecure", label: "wanmig live, --insecure (frames in the clear)", kind: "wanmig", mode: "live", deltas: "coalesce", auth: "insecure" },
  { id: "live-paper", label: "wanmig live, --deltas paper", kind: "wanmig", mode: "live", deltas: "paper" },
  { id: "live-zstd1", label: "wanmig live, --compress zstd (level 1 fixed: the old default)", kind: "wanmig", mode: "live", deltas: "coalesce", compress: "zstd" },
  { id: "live-zstd19", label: "wanmig live, --compress zstd:19", kind: "wanmig", mode: "live", deltas: "coalesce", compress: "zstd:19" },
  { id: "live-2disks", label: "wanmig live, the same data as two disks (the image's halves)", kind: "wanmig", mode: "live", deltas: "coalesce", twoDisks: true },
  { id: "freeze", label: "wanmig freeze-and-copy", kind: "wanmig", mode: "freeze-and-copy", deltas: "coalesce" },
  { id: "nbdcopy", label: "nbdcopy -C 4 ← qemu-nbd (peer, not live)", kind: "nbdcopy" },
  { id: "qsd-mirror", label: "QEMU live: qemu-storage-daemon blockdev-mirror → qemu-nbd (peer)", kind: "qsd-mirror" },
];
const DEFAULT_ROWS = "iperf3-1,iperf3-n,live-coalesce,live-tls,live-insecure,nbdcopy,qsd-mirror";

/** This run's scratch directory (the images, each row's hosts): removed at the end. */
let baseDir: string | undefined;

/** Other processes seen during the row under way (foreignProcesses, polled every second). */
const foreign = new Set<string>();
setInterval(() => {
  for (const o of foreignProcesses(baseDir)) foreign.add(o);
}, 1000).unref();

/** The shared cleanup (the link emulator, processes, namespaces), then this run's scratch directory. */
async function cleanupAll(): Promise<void> {
  await cleanup();
  if (baseDir) rmSync(baseDir, { recursive: true, force: true });
}

/**
 * The live peer: QEMU's own storage migration (peers/qsd-mirror.ts, copy-mode background, QEMU's
 * default), under the same static-web workload, which talks to qemu-storage-daemon.
 */
async function runQsdMirror(sc: MigrateScenario, row: RowDef, ctx: Ctx, dir: string): Promise<RowResult> {
  const r: RowResult = { scenario: sc.name, row: row.id, label: row.label, ok: false, rss: {}, notes: [] };
  const tx0 = await linkTxBytes(sc);
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
  r.linkTxBytes = (await linkTxBytes(sc)) - tx0;
  for (const p of m.procs) if (p.watchRss) r.rss[p.name] = p.peak;
  keepLogs(ctx, sc, row, m.procs);
  r.ok = m.ok;
  r.error = m.error;
  r.identical = m.ok;
  r.migrationTimeS = m.migrationS;
  if (m.ok && m.migrationS) r.throughputBps = (ctx.dataBytes * 8) / m.migrationS;
  r.downtimeMs = m.downtimeMs;
  return r;
}

// ---- the run ----------------------------------------------------------------------------

type Options = ReturnType<typeof parseOptions>;

function parseOptions(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      scenario: { type: "string", default: "lan,lfn,lfn20,lfnloss,wan" },
      rows: { type: "string", default: DEFAULT_ROWS },
      "image-mib": { type: "string", default: "1024" },
      "data-mib": { type: "string", default: "300" },
      ...scenarioOptions(),
      "queue-ms": { type: "string" },
      streams: { type: "string", default: "auto" },
      "iperf-streams": { type: "string", default: "4" },
      "iperf-s": { type: "string", default: "10" },
      "timeout-s": { type: "string" },
      "keep-logs": { type: "string" },
      compress: { type: "string" },
      "image-kind": { type: "string" },
      json: { type: "string" },
    },
  });
  const imageKind = values["image-kind"] as ImageKind | undefined;
  if (imageKind !== undefined && !IMAGE_KINDS.includes(imageKind)) throw new Error(`unknown --image-kind ${imageKind}; use ${IMAGE_KINDS.join(", ")}`);
  const scenarios = values.scenario!.split(",").map((s) => scenario(s.trim(), values, imageKind));
  const rows = values.rows!.split(",").map((s) => {
    const row = ROWS.find((r) => r.id === s.trim());
    if (!row) throw new Error(`unknown row ${s}; use ${ROWS.map((r) => r.id).join(", ")}`);
    return row;
  });
  const queueMs = values["queue-ms"] === undefined ? undefined : Number(values["queue-ms"]);
  return { values, scenarios, rows, queueMs, imageMiB: Number(values["image-mib"]), dataMiB: Number(values["data-mib"]) };
}

/** One image per kind the scenarios move; the zstd -19 size only where a slow link needs it (768 MiB take zstd -19 minutes). */
async function buildImages(o: Options, meta: Record<string, unknown>): Promise<Map<string, ImageFacts & { path: string }>> {
  const images = new Map<string, ImageFacts & { path: string }>();
  for (const kind of new Set(o.scenarios.map((sc) => sc.imageKind))) {
    const path = join(baseDir!, `image-${kind}.raw`);
    const slow = o.scenarios.some((sc) => sc.imageKind === kind && sc.bps > 0 && sc.bps < 100e6);
    console.error(`image (${kind}): ${o.imageMiB} MiB sparse, ${o.dataMiB} MiB of data in ${path}`);
    const img = await buildImage(path, o.imageMiB, o.dataMiB, kind, slow);
    const dataBytes = img.extents.reduce((s, e) => s + e.mib * MiB, 0);
    console.error(`  extents: ${img.extents.map((e) => `${e.kind} ${e.mib.toFixed(0)} MiB @ ${e.offsetMiB} MiB`).join(", ")}${img.zstd19Bytes ? `; zstd -19 of the data: ${(img.zstd19Bytes / MiB).toFixed(1)} MiB` : ""}`);
    images.set(kind, { path, kind, dataBytes, zstd19Bytes: img.zstd19Bytes });
    meta[`image-${kind}`] = { imageMiB: o.imageMiB, dataMiB: o.dataMiB, ...img };
  }
  return images;
}

/** The scratch directory, the images, the secret and the TLS certificates; what is measured goes into `meta`. */
async function prepare(o: Options, meta: Record<string, unknown>): Promise<{ ctx: Ctx; images: Map<string, ImageFacts & { path: string }> }> {
  const { values } = o;
  await $`bash ${join(REPO, "scripts", "install-deps.sh")} core guest bench`; // nbdcopy, qemu-nbd, zstd, openssl; qemu-storage-daemon; iperf3
  baseDir = mkdtempSync("/tmp/wanmig-bench-migrate-");
  const secret = join(baseDir, "secret");
  writeFileSync(secret, randomBytes(24).toString("hex"), { mode: 0o600 });
  const images = await buildImages(o, meta);
  let tls: Ctx["tls"];
  if (o.rows.some((r) => r.auth === "tls")) {
    mkdirSync(join(baseDir, "pki"));
    tls = await makeTlsPki(join(baseDir, "pki"), [EMU_DST_IP, DST_IP, "127.0.0.1"]);
  }
  // The wanmig measured: HEAD, and a hash of uncommitted changes under src/ if any.
  const diff = await $`git diff HEAD -- src`.cwd(REPO).nothrow().quiet();
  meta.wanmig = { head: (await $`git rev-parse --short HEAD`.cwd(REPO).nothrow().text()).trim(), srcDiffSha256: diff.stdout.length ? new Bun.CryptoHasher("sha256").update(diff.stdout).digest("hex").slice(0, 16) : "" };
  const ctx: Ctx = {
    image: "", imageMiB: o.imageMiB, dataMiB: o.dataMiB, dataBytes: 0, secret, tls, streams: values.streams!,
    iperfStreams: Number(values["iperf-streams"]), iperfSeconds: Number(values["iperf-s"]),
    timeoutS: values["timeout-s"] ? Number(values["timeout-s"]) : undefined, port: 7100, logDir: values["keep-logs"], compress: values.compress,
  };
  return { ctx, images };
}

/** One scenario: its path up (the link emulator, or the veth), each row over it, the path down. */
async function runScenario(sc: MigrateScenario, o: Options, ctx: Ctx, image: ImageFacts & { path: string }, meta: Record<string, unknown>, results: RowResult[]): Promise<void> {
  ctx.image = image.path;
  ctx.dataBytes = image.dataBytes;
  const path = await linkUp(sc, o.queueMs);
  const tcp = await tcpMem();
  const m: Record<string, unknown> = { bps: sc.bps, rttMs: sc.rttMs, loss: sc.loss ?? 0, imageKind: sc.imageKind, path, tcp };
  meta[sc.name] = m;
  console.error(`\n== ${sc.name.toUpperCase()}: ${fmtRate(sc.bps)}, RTT ${sc.rttMs} ms; ${path}; ${image.kind} data; ${tcp}`);
  try {
    for (const row of o.rows) results.push(await runRow(sc, row, ctx));
  } finally {
    const counts = await linkDown();
    if (counts) {
      m.emulator = counts;
      console.error(`   link emulator: ${JSON.stringify(counts)}`);
    }
  }
}

/** The row's runner by its kind. */
function runnerOf(row: RowDef): (sc: MigrateScenario, row: RowDef, ctx: Ctx, dir: string) => Promise<RowResult> {
  if (row.kind === "wanmig") return runWanmig;
  if (row.kind === "qsd-mirror") return runQsdMirror;
  if (row.kind === "iperf3") return runIperf3;
  return runNbdcopy;
}

/** One row in its own directory, with the load and the other processes seen meanwhile; its figures on stderr. */
async function runRow(sc: MigrateScenario, row: RowDef, ctx: Ctx): Promise<RowResult> {
  const dir = mkdtempSync(join(baseDir!, `${sc.name}-${row.id}-`));
  console.error(`-- ${row.label} …`);
  foreign.clear();
  const load0 = readFileSync("/proc/loadavg", "utf8").split(" ")[0];
  const r = await runnerOf(row)(sc, row, ctx, dir);
  r.load = `${load0} → ${readFileSync("/proc/loadavg", "utf8").split(" ")[0]}`;
  for (const o of foreignProcesses(baseDir)) foreign.add(o);
  if (foreign.size) r.notes.push(`NOISY: ${foreign.size} other processes shared the CPUs during this row, e.g. ${[...foreign][0]}`);
  rmSync(dir, { recursive: true, force: true });
  const rss = Object.entries(r.rss).map(([k, v]) => `${k} ${peakMiB(v).toFixed(0)}`).join(", ");
  const cpu = Object.entries(r.rss).map(([k, v]) => `${k} ${v.cpuS.toFixed(1)}`).join(", ");
  const rate = r.throughputBps === undefined ? "" : `${(r.throughputBps / 1e6).toFixed(1)} Mbit/s${sc.bps ? ` (${(r.throughputBps / sc.bps).toFixed(2)}× the link)` : ""}`;
  const time = r.migrationTimeS === undefined ? "" : `${r.migrationTimeS.toFixed(2)} s, downtime ${r.downtimeMs?.toFixed(0) ?? "–"} ms, `;
  const sent = `${r.wireBytes === undefined ? "" : `sent ${(r.wireBytes / MiB).toFixed(1)} MiB, `}link ${((r.linkTxBytes ?? 0) / MiB).toFixed(1)} MiB`;
  console.error(r.ok ? `   ${time}${rate}; ${sent}${rss ? `; peak RSS MiB: ${rss}; CPU s: ${cpu}` : ""}` : `   FAILED: ${r.error}`);
  for (const n of r.notes) console.error(`   ${n.replace(/\n/g, "\n     ")}`);
  return r;
}

export async function main(argv: string[]): Promise<void> {
  const o = parseOptions(argv);
  if (process.getuid?.() !== 0) throw new Error("needs root (ip netns, tc, TUN devices)");
  const onSignal = () => {
    console.error("\ninterrupted: cleaning up");
    void cleanupAll().then(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const results: RowResult[] = [];
  const meta: Record<string, unknown> = {};
  let images = new Map<string, ImageFacts & { path: string }>();
  try {
    const prepared = await prepare(o, meta);
    images = prepared.images;
    await netSetup();
    for (const sc of o.scenarios) await runScenario(sc, o, prepared.ctx, images.get(sc.imageKind)!, meta, results);
  } finally {
    await cleanupAll();
  }

  const { lines, targets, summary } = report(o.scenarios, results, images, meta, o.imageMiB);
  console.log(lines.join("\n"));
  if (o.values.json) await Bun.write(o.values.json, JSON.stringify({ date: new Date().toISOString(), wanmig: meta.wanmig, images: Object.fromEntries(Object.entries(meta).filter(([k]) => k.startsWith("image-"))), scenarios: summary, targets, results }, null, 2));
}
