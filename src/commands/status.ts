import { defineCommand } from "citty";
import { ControlClient } from "../disk/service/control-client.ts";
import { controlSocketPath, type ServeStatus } from "../disk/service/status.ts";
import { formatBytes } from "../util/format.ts";
import { readdirSync } from "node:fs";
import { jsonArg, runDirArg } from "./_shared.ts";
import { readGroupProgress } from "../remote/group-progress.ts";
import { parseGroupName } from "../remote/move-group.ts";
import { etaRise, type JobSummary, renderSummary, summarize } from "../report/job-progress.ts";

const WATCH_EVERY_MS = 1000;

/** A group's moves on this host (an evacuation), once or every second until none waits or sends. */
async function groupStatus(runDir: string, group: string, json: boolean, watch: boolean): Promise<void> {
  let prev: { at: number; s: JobSummary } | undefined;
  for (;;) {
    const moves = readGroupProgress(runDir, group);
    const s = summarize(moves);
    const rise = prev ? etaRise(prev.s, s, (performance.now() - prev.at) / 1000) : undefined;
    if (json) process.stdout.write(`${JSON.stringify({ group, ...s, ...(rise ? { etaRise: rise } : {}), ...(watch ? { at: Date.now() } : { moves }) })}\n`);
    else {
      process.stdout.write(`${renderSummary(group, s)}${rise ? ` (${rise})` : ""}\n`);
      if (!watch) for (const m of moves) process.stdout.write(`  ${m.vm.padEnd(16)} ${m.state}${m.state === "sending" || m.state === "waiting" ? `, ${formatBytes(m.bytesLeft)} left` : ""}${m.error ? `: ${m.error}` : ""}\n`);
    }
    if (!watch || !moves.length || s.underWay + s.waiting === 0) return;
    prev = { at: performance.now(), s };
    await Bun.sleep(WATCH_EVERY_MS);
  }
}

export function renderStatus(s: ServeStatus): string {
  const t = s.throttle;
  const r = s.recording;
  const lines = [
    `${s.name}: ${s.mode}, ${s.clients} client(s), pid ${s.pid}`,
    `  image      ${s.image} (${formatBytes(s.size)}${s.readOnly ? ", read-only" : ""})`,
    `  nbd        ${s.nbd}${s.maxRequest ? `, requests up to ${formatBytes(s.maxRequest)}` : ""}`,
    ...(s.disks.length > 1 ? s.disks.map((d) => `  ${d.export.padEnd(10)} ${d.image} (${formatBytes(d.size)}): ${d.io.writes} writes (${formatBytes(d.io.bytesWritten)}), ${d.io.reads} reads (${formatBytes(d.io.bytesRead)})`) : []),
    `  io         ${s.io.writes} writes (${formatBytes(s.io.bytesWritten)}), ${s.io.reads} reads (${formatBytes(s.io.bytesRead)}), ${s.io.flushes} flushes, ${s.io.errors} errors`,
    `  recording  ${r.active ? `on, ${r.records} deltas (${formatBytes(r.bytes)}) in ${r.path}${r.restarts ? `, went on after ${r.restarts} restart(s)` : ""}` : "off"}${r.failed ? `, FAILED: ${r.failed}` : ""}`,
    `  throttle   level ${t.level}, delay ${t.currentDelayUs} us, next step at ${t.nextThreshold} writes (${t.writesCounted} counted), ${t.queueLength} writes held (${formatBytes(t.heldBytes ?? 0)})${t.rateCapBytesPerSec ? `, capped at ${formatBytes(t.rateCapBytesPerSec)}/s` : ""}${t.vmStopped ? `, lifted (the VM stopped for the hand-off${t.pauseDrain ? `; its pause drained ${t.pauseDrain.writes} writes, ${formatBytes(t.pauseDrain.bytes)}` : ""})` : ""}`,
    `  fence      ${s.fence.fenced ? `fenced${s.fence.since ? ` since ${s.fence.since}` : ""}, ${s.fence.refusedWrites} writes refused` : "open"}`,
    `  hand-off   ${s.handoff.text}${s.handoff.recording ? ` (${s.handoff.recording})` : ""}`,
  ];
  const m = s.migration;
  if (m && m.state !== "completed")
    lines.push(`  incoming   ${m.state}: bulk ${m.size ? ((m.bulkOffset / m.size) * 100).toFixed(1) : "0"}% (${formatBytes(m.bulkOffset)} of ${formatBytes(m.size)}), next delta ${m.nextSeq}; I/O held until verified`);
  return lines.join("\n");
}

/** Every serve (or dest) on this host: the control sockets in the run directory. */
async function allStatuses(runDir: string): Promise<ServeStatus[]> {
  let names: string[] = [];
  try {
    names = readdirSync(runDir).filter((f) => f.endsWith(".ctl")).map((f) => f.slice(0, -4));
  } catch {
    return [];
  }
  const all = await Promise.all(names.map((n) => new ControlClient(controlSocketPath(runDir, n)).status().catch(() => undefined)));
  return all.filter((s): s is ServeStatus => !!s);
}

export default defineCommand({
  meta: { name: "status", description: "Show the state of the serves on this host (or one, with --name): mode, clients, recording, throttle, fence; or a group's moves (--group)" },
  args: {
    name: { type: "string", description: "only this one", valueHint: "NAME" },
    group: { type: "string", description: "the moves of this group (migrate --group) on this host: done, under way, waiting, bytes left, ETA", valueHint: "NAME" },
    watch: { type: "boolean", description: "with --group: a line every second until no move waits or sends; a rising ETA says why", default: false },
    ...runDirArg,
    ...jsonArg,
  },
  async run({ args }) {
    if (args.group !== undefined) return groupStatus(args["run-dir"], parseGroupName(args.group), args.json, args.watch);
    if (args.name) {
      const status = await new ControlClient(controlSocketPath(args["run-dir"], args.name)).status();
      process.stdout.write(args.json ? `${JSON.stringify(status)}\n` : `${renderStatus(status)}\n`);
      return;
    }
    const all = await allStatuses(args["run-dir"]);
    if (args.json) process.stdout.write(`${JSON.stringify(all)}\n`);
    else process.stdout.write(all.length ? `${all.map(renderStatus).join("\n")}\n` : `no serve in ${args["run-dir"]}\n`);
  },
});
