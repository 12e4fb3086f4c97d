// The source's whole migration: which kind it is (a live one, the freeze-and-copy baseline,
// or the re-run that settles an unfinished hand-off), with the abort discipline: a failure
// before the point of no return stops recording and leaves the disk served and writable;
// after it, the disk stays fenced and the error says so.

import { ControlClient } from "../../disk/service/control-client.ts";
import { controlSocketPath } from "../../disk/service/status.ts";
import { ExitCode } from "../../errors.ts";
import type { Channel } from "../../net/channel.ts";
import { InitError } from "../errors.ts";
import { freezeAndCopy } from "./freeze-and-copy.ts";
import { live } from "./live.ts";
import { blockSize, phaseEvent, SERVE_RESTART_GRACE_MS, type SourceOptions, type SourceResult } from "./options.ts";
import { settleUnfinished } from "./settle.ts";

export type { MigrationMetrics } from "./metrics.ts";
export { DEFAULT_MAX_DOWNTIME_MS, type SourceOptions, type SourceResult } from "./options.ts";

export async function runSource(o: SourceOptions): Promise<SourceResult> {
  const t0 = performance.now();
  const ctl = new ControlClient(controlSocketPath(o.runDir, o.name));
  let status;
  try {
    status = await ctl.status();
  } catch (cause) {
    throw new InitError(`no local serve named ${o.name}`, { cause, hint: `start it with: wanmig serve --name ${o.name} --image PATH` });
  }
  // The rest rides out a serve restarting under us (it goes on with the recording).
  const retrying = new ControlClient(controlSocketPath(o.runDir, o.name), { retryMs: SERVE_RESTART_GRACE_MS });
  if (status.handoff.state === "unfinished") {
    if (o.mode === "freeze-and-copy") throw new InitError(`${o.name} has an unfinished hand-off`, { hint: "run the live migration again (without --mode freeze-and-copy) to finish or roll it back" });
    return settleUnfinished(retrying, status, blockSize(o), o, t0);
  }
  // Not 5: the VM does not run here with a writable disk; there is nothing to migrate from here.
  if (status.mode === "fenced")
    throw new InitError(`${o.name} is fenced here (${status.handoff.text})`, { hint: "it has moved away; migrate it from where it runs now", exitCode: ExitCode.badInput });
  if (o.mode === "freeze-and-copy" && status.recording.active)
    throw new InitError(`${o.name} is recording for a live migration`, { hint: "wait for it to finish; or, if its source died, stop recording first (POST /v1/record stop)" });
  if (o.mode !== "freeze-and-copy") return live(retrying, status, blockSize(o), o, t0);
  // xl and virsh let the domain go at the end of their memory copy: its disk, copied only
  // after the pause, would not be at the destination yet.
  if (o.hypervisor?.pointOfNoReturn === "memory-moved")
    throw new InitError(`--mode freeze-and-copy cannot move a ${o.hypervisor.kind} domain`, { hint: "use --mode live", exitCode: ExitCode.usage });
  phaseEvent(o, "init");
  let ch: Channel;
  try {
    ch = await o.connect();
  } catch (cause) {
    throw new InitError(`cannot connect to the destination${o.to ? ` ${o.to}` : ""}`, { cause, hint: "is `wanmig dest` waiting there? check --to, and the path between" });
  }
  return freezeAndCopy(ch, retrying, status, blockSize(o), o, t0);
}
