// The migrate bench's report: a table per scenario (each row's time, throughput as a share
// of the link, bytes, downtime, memory), the targets each scenario holds its default
// wanmig row to (migrate-scenarios.ts), and what the columns mean.

import { MiB } from "./lib/constants.ts";
import type { RowResult } from "./lib/migrate-row.ts";
import type { Peak } from "./lib/proc.ts";
import type { MigrateScenario } from "./migrate-scenarios.ts";

/** The row each scenario's targets are about: wanmig's defaults, frames sealed with a secret. */
export const TARGET_ROW = "live-coalesce";
const MIGRATION_PEERS = ["nbdcopy", "qsd-mirror"];
const TARGET_RSS_MIB = 200;

/** A scenario's image, as the report needs it. */
export interface ImageFacts {
  kind: string;
  dataBytes: number;
  zstd19Bytes?: number;
}

export interface Report {
  lines: string[];
  targets: { target: string; figure: string; pass: boolean | undefined }[];
  summary: Record<string, unknown>;
}

const mib = (b?: number) => (b === undefined ? "–" : (b / MiB).toFixed(1));
export const peakMiB = (p?: Peak) => (p ? Math.max(p.polledKiB, p.hwmKiB) / 1024 : NaN);
const mark = (ok: boolean) => (ok ? "PASS" : "MISS");
const mbit = (bps?: number) => (bps === undefined ? "–" : `${(bps / 1e6).toFixed(bps < 10e6 ? 2 : 0)} Mbit/s`);

export function fmtRate(bps: number): string {
  if (!bps) return "uncapped";
  return bps >= 1e9 ? `${bps / 1e9} Gbit/s` : bps >= 1e6 ? `${bps / 1e6} Mbit/s` : `${bps / 1e3} kbit/s`;
}

/** A slow link's limit is the data's zstd -19 size over it; a fast link's, the data's own size (compression may beat it); loopback has none. */
const isSlow = (sc: MigrateScenario) => sc.bps > 0 && sc.bps < 100e6;

/** The scenario's physical limit: its bytes and seconds (the bytes over the rate, plus one round trip). */
function limitOf(sc: MigrateScenario, img: ImageFacts): { limitBytes?: number; limitS?: number } {
  const limitBytes = isSlow(sc) ? img.zstd19Bytes : img.dataBytes;
  return { limitBytes, limitS: sc.bps && limitBytes ? (limitBytes * 8) / sc.bps + sc.rttMs / 1000 : undefined };
}

function rssCell(r: RowResult): string {
  if (r.row === "nbdcopy") return `qemu-nbd ${peakMiB(r.rss["qemu-nbd"]).toFixed(0)} / – / nbdcopy ${peakMiB(r.rss.nbdcopy).toFixed(0)} MiB`;
  if (r.row === "qsd-mirror") return `qsd ${peakMiB(r.rss.qsd).toFixed(0)} / – / qemu-nbd ${peakMiB(r.rss["qemu-nbd"]).toFixed(0)} MiB`;
  const v = ["serve", "source", "dest"].map((k) => peakMiB(r.rss[k]));
  if (v.every(Number.isNaN)) return "–";
  return `${v.map((x) => x.toFixed(0)).join(" / ")} MiB ${mark(v.every((x) => x < TARGET_RSS_MIB))}`;
}

/** A row of a scenario's table; the target row's share of the link, or of the limit, marked. */
function tableRow(sc: MigrateScenario, r: RowResult, limitS: number | undefined): string {
  const isTarget = r.row === TARGET_ROW;
  const share = sc.bps && r.throughputBps !== undefined ? r.throughputBps / sc.bps : undefined;
  const shareCell = share === undefined ? "–" : `${share.toFixed(2)}×${isTarget && sc.target.minLinkShare ? ` ${mark(share >= sc.target.minLinkShare)}` : ""}`;
  const ratio = limitS && r.migrationTimeS !== undefined ? r.migrationTimeS / limitS : undefined;
  const ratioCell = ratio === undefined ? "–" : `${ratio.toFixed(2)}×${isTarget && sc.target.maxZstdLimit ? ` ${mark(ratio <= sc.target.maxZstdLimit)}` : ""}`;
  const cells = [
    `${r.label}${r.streams ? ` [${r.streams} TCP stream${r.streams > 1 ? "s" : ""}]` : ""}`,
    r.migrationTimeS === undefined ? "–" : `${r.migrationTimeS.toFixed(2)} s`,
    mbit(r.throughputBps),
    shareCell,
    ratioCell,
    r.downtimeMs === undefined ? "–" : `${r.downtimeMs.toFixed(0)} ms${r.row === "nbdcopy" ? " (not live)" : ""}`,
    r.wireBytes === undefined ? "–" : `${mib(r.wireBytes)} MiB`,
    r.bulkWireBytes === undefined ? "–" : `${mib(r.bulkWireBytes)} MiB`,
    `${mib(r.linkTxBytes)} MiB`,
    r.deltas === undefined ? "–" : `${r.deltas} / ${r.deltasSkipped} / ${r.finalDeltas}`,
    `${r.throttleSteps ?? "–"}`,
    rssCell(r),
    r.identical ? "identical" : r.identical === false ? "DIFFER" : "–",
  ];
  return `| ${cells.join(" | ")} |`;
}

/** The scenario's targets, from its rows (the target row against the link, the limit or its peers). */
function scenarioTargets(rep: Report, sc: MigrateScenario, rs: RowResult[], limitS: number | undefined): void {
  const t = sc.target;
  const live = rs.find((r) => r.row === TARGET_ROW && r.ok);
  if (!live) {
    if (rs.some((r) => r.row === TARGET_ROW)) rep.targets.push({ target: `${sc.name}: the sealed wanmig row`, figure: "FAILED", pass: false });
    return;
  }
  const peers = rs.filter((r) => MIGRATION_PEERS.includes(r.row) && r.ok).sort((x, y) => x.migrationTimeS! - y.migrationTimeS!);
  const best = peers[0];
  if (t.minLinkShare && sc.bps) {
    const share = live.throughputBps! / sc.bps;
    rep.targets.push({ target: `${sc.name} throughput ≥ ${t.minLinkShare} × the link (${fmtRate(sc.bps)})`, figure: `${mbit(live.throughputBps)} = ${share.toFixed(2)} ×`, pass: share >= t.minLinkShare });
  }
  if (t.beatPeers)
    rep.targets.push({ target: `${sc.name} throughput ≥ the best peer's`, figure: best ? `${mbit(live.throughputBps)} against ${mbit(best.throughputBps)} (${best.row})` : "no peer row ran", pass: best ? live.throughputBps! >= best.throughputBps! : undefined });
  if (t.maxZstdLimit && limitS) {
    const ratio = live.migrationTimeS! / limitS;
    rep.targets.push({ target: `${sc.name} migration time ≤ ${t.maxZstdLimit} × the zstd -19 limit`, figure: `${live.migrationTimeS!.toFixed(1)} s = ${ratio.toFixed(2)} × ${limitS.toFixed(1)} s`, pass: ratio <= t.maxZstdLimit });
  }
  if (t.maxPeerTime && best) {
    const ratio = live.migrationTimeS! / best.migrationTimeS!;
    rep.targets.push({ target: `${sc.name} migration ≤ ${t.maxPeerTime} × the fastest peer's time`, figure: `${live.migrationTimeS!.toFixed(2)} s = ${ratio.toFixed(2)} × ${best.migrationTimeS!.toFixed(2)} s (${best.row})`, pass: ratio <= t.maxPeerTime });
  }
}

const HEADER = [
  "| row | migration | throughput | × link | × limit | storage downtime | sent (app) | bulk on wire | link tx | deltas sent / skipped / after fence | throttle | peak RSS serve / source / dest | images |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
];

/** A scenario's table, its notes, and its targets (into `rep`). */
function scenarioTable(rep: Report, sc: MigrateScenario, rs: RowResult[], img: ImageFacts, meta: Record<string, unknown>, imageMiB: number): void {
  const { limitBytes, limitS } = limitOf(sc, img);
  rep.summary[sc.name] = { ...(meta[sc.name] as object), physicalLimitS: limitS, limitBytes };
  const path = `${fmtRate(sc.bps)}, RTT ${sc.rttMs} ms${sc.loss ? `, ${sc.loss * 100} % loss` : ""}`;
  rep.lines.push(
    `### ${sc.name.toUpperCase()}: ${path} (${sc.about}); ${imageMiB} MiB image, ${mib(img.dataBytes)} MiB ${img.kind} data, static-web workload`,
    limitS
      ? `physical limit: ${mib(limitBytes)} MiB (${isSlow(sc) ? "the data at zstd -19" : "the data"}) × 8 / ${fmtRate(sc.bps)} + ${sc.rttMs} ms = ${limitS.toFixed(2)} s`
      : "physical limit: none (uncapped); the measure is the fastest peer's time",
    "",
    ...HEADER,
  );
  for (const r of rs) rep.lines.push(r.ok ? tableRow(sc, r, limitS) : `| ${r.label} | FAILED: ${r.error?.split("\n")[0]} ||||||||||||`);
  scenarioTargets(rep, sc, rs, limitS);
  for (const r of rs) for (const n of r.notes) rep.lines.push(`- ${r.row}: ${n.replace(/\s*\n\s*/g, " | ").slice(0, 300)}`);
  rep.lines.push("");
}

/** The largest peak RSS of any wanmig process, as a target. */
function rssTarget(rep: Report, results: RowResult[], imageMiB: number): void {
  let worst = { v: 0, who: "" };
  for (const r of results)
    for (const k of ["serve", "source", "dest"]) {
      const v = peakMiB(r.rss[k]);
      if (v > worst.v) worst = { v, who: `${k}, ${r.scenario} ${r.row}` };
    }
  if (worst.who) rep.targets.push({ target: `peak RSS of each wanmig process < ${TARGET_RSS_MIB} MiB (${imageMiB} MiB image)`, figure: `max ${worst.v.toFixed(0)} MiB (${worst.who})`, pass: worst.v < TARGET_RSS_MIB });
}

/** Every scenario's table, then the targets' table and what the columns mean. */
export function report(scenarios: MigrateScenario[], results: RowResult[], images: Map<string, ImageFacts>, meta: Record<string, unknown>, imageMiB: number): Report {
  const rep: Report = { lines: [], targets: [], summary: {} };
  for (const sc of scenarios) {
    const img = images.get(sc.imageKind);
    if (img) scenarioTable(rep, sc, results.filter((r) => r.scenario === sc.name), img, meta, imageMiB);
  }
  rssTarget(rep, results, imageMiB);
  rep.lines.push("| target | figure | |", "|---|---|---|");
  for (const t of rep.targets) rep.lines.push(`| ${t.target} | ${t.figure} | ${t.pass === undefined ? "n/a" : mark(t.pass)} |`);
  rep.lines.push(
    "",
    "migration: source start to DONE (nbdcopy: wall clock of the copy). throughput: the image's data over the migration time (iperf3: its received rate over the test); × link: that over the link's rate. " +
      "× limit: the migration time over the physical limit. storage downtime: fence to DONE (freeze-and-copy and nbdcopy: the whole copy). " +
      "sent (app): bytes the source wrote to its socket. link tx: bytes the source's host sent on the path (its veth end, or its link emulator device; IP packets). " +
      "peak RSS: max of VmRSS polled every 100 ms and of VmHWM (read at each poll and before the kill). The targets are the sealed wanmig row's (live-coalesce).",
  );
  return rep;
}
