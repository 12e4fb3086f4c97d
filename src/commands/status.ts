import { defineCommand } from "citty";
import { ControlClient } from "../disk/control-client.ts";
import { controlSocketPath, type ServeStatus } from "../disk/disk-service.ts";
import { formatBytes } from "../util/format.ts";
import { jsonArg, nameArg, runDirArg } from "./_shared.ts";

export function renderStatus(s: ServeStatus): string {
  const t = s.throttle;
  const r = s.recording;
  const lines = [
    `${s.name}: ${s.mode}, ${s.clients} client(s), pid ${s.pid}`,
    `  image      ${s.image} (${formatBytes(s.size)}${s.readOnly ? ", read-only" : ""})`,
    `  nbd        ${s.nbd}`,
    `  io         ${s.io.writes} writes (${formatBytes(s.io.bytesWritten)}), ${s.io.reads} reads (${formatBytes(s.io.bytesRead)}), ${s.io.flushes} flushes, ${s.io.errors} errors`,
    `  recording  ${r.active ? `on, ${r.records} deltas (${formatBytes(r.bytes)}) in ${r.path}` : "off"}${r.failed ? `, FAILED: ${r.failed}` : ""}`,
    `  throttle   level ${t.level}, delay ${t.currentDelayUs} us, next step at ${t.nextThreshold} writes (${t.writesCounted} counted), ${t.queueLength} queued`,
    `  fence      ${s.fence.fenced ? `fenced, ${s.fence.refusedWrites} writes refused` : "open"}`,
  ];
  return lines.join("\n");
}

export default defineCommand({
  meta: { name: "status", description: "Show the state of a local serve: mode, clients, recording, throttle, fence" },
  args: { ...nameArg, ...runDirArg, ...jsonArg },
  async run({ args }) {
    const status = await new ControlClient(controlSocketPath(args["run-dir"], args.name)).status();
    process.stdout.write(args.json ? `${JSON.stringify(status)}\n` : `${renderStatus(status)}\n`);
  },
});
