// The final summary a person reads after `wanmig source` or `migrate`: the paper's metrics,
// one per line, downtime first.

import type { MigrationMetrics } from "../phases/source/metrics.ts";
import { formatBytes } from "../util/format.ts";

/** "zstd 19 for 92 %, 15 for 6 %, none for 2 %": the levels the image's bytes went at. */
function compressionLine(levels: Record<string, number>, streamed: number): string {
  const total = Object.values(levels).reduce((a, b) => a + b, 0);
  if (!total) return "nothing sent";
  const parts = Object.entries(levels)
    .filter(([, b]) => b > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([l, b]) => `${l === "0" ? "none" : `zstd ${l}`} for ${((b / total) * 100).toFixed(0)} %`);
  const stream = streamed ? `; ${((streamed / total) * 100).toFixed(0)} % of the bytes as one long-window stream (a slow link)` : "";
  return parts.join(", ") + stream;
}

/** The final summary: the paper's metrics, one per line, downtime first. */
export function summary(name: string, m: MigrationMetrics): string {
  const rows: [string, string][] = [
    ...(m.downtimeMs !== m.storageDowntimeMs ? ([["VM downtime", `${m.downtimeMs} ms (paused at the source until the hypervisor reported the move complete)`]] as [string, string][]) : []),
    [
      "storage downtime",
      `${m.storageDowntimeMs} ms${m.estimatedStorageDowntimeMs !== undefined ? ` (expected ${m.estimatedStorageDowntimeMs} ms; budget ${m.maxDowntimeMs} ms and a round trip)` : ""} (fence to the destination's verified image${
        m.storageDowntimeParts
          ? ` = ${m.storageDowntimeParts.fenceAndLastDeltasMs} fence and ${m.finalDeltas} last deltas + ${m.storageDowntimeParts.digestMs} digest here + ${m.storageDowntimeParts.destinationMs} destination applying and verifying`
          : ""
      })`,
    ],
    ["bulk copy", `${formatBytes(m.bulkBytes)} sent as ${formatBytes(m.bulkWireBytes)}; ${m.bulkZeroBlocks} zero blocks skipped${m.bulkHoleBytes ? ` (${formatBytes(m.bulkHoleBytes)} of holes not even read)` : ""}${m.bulkBaseBlocks ? `, ${m.bulkBaseBlocks} already in the destination's base` : ""}`],
    ["compression", compressionLine(m.compressLevels, m.bulkStreamedBytes)],
    ["deltas", `${m.deltaCount} sent (${formatBytes(m.deltaBytes)} as ${formatBytes(m.deltaWireBytes)}), ${m.deltasSkipped} skipped, ${m.deltaRatePerSec}/s${m.copyPasses ? `; ${m.copyPasses} copy ${m.copyPasses === 1 ? "pass" : "passes"} sent ${formatBytes(m.copiedBytes)} of the image in place of the records they stand for` : ""}`],
    ...(m.disks && m.disks.length > 1
      ? m.disks.map((d): [string, string] => [`  ${d.export}`, `${d.deltas} deltas (${formatBytes(d.bytes)}), ${d.finalDeltas} of them in the hand-off (${formatBytes(d.finalBytes)})`])
      : []),
    ["on the wire", `${formatBytes(m.bytesOnWire)}${m.streams > 1 ? ` over ${m.streams} connections` : ""}`],
    ["throttle", `highest level ${m.throttleSteps}`],
  ];
  if (m.pauseDrain) rows.push(["pause drained", `${m.pauseDrain.writes} writes (${formatBytes(m.pauseDrain.bytes)}) the VM had in flight when it paused${m.pauseHeldBackMs ? `; its pause was held back ${(m.pauseHeldBackMs / 1000).toFixed(1)} s until they fit the budget` : ""}`]);
  if (m.frozen) rows.push(["timeout", m.frozen]);
  if (m.reconnects) rows.push(["link", `${m.reconnects} reconnect(s), resumed; ${formatBytes(m.bytesResent)} sent again`]);
  return `migrated ${name} in ${(m.migrationTimeMs / 1000).toFixed(1)} s\n${rows.map(([k, v]) => `  ${k.padEnd(17)}${v}`).join("\n")}\n`;
}

