// The VM comes back to a host it left. The server that still holds its old image there
// (a `serve`, or the `dest` that once received it) was fenced for good by the move away and
// only keeps the name: it is stopped, so that the new incoming migration can take that
// image as its base. Only such a server, and only for the same images: a server whose disk
// may be the VM's live disk is never touched (disk-service.ts retire refuses it too).

import { resolve } from "node:path";
import { ServeError } from "../../errors.ts";
import type { Logger } from "../../log.ts";
import { ControlClient } from "./control-client.ts";
import { controlSocketPath, servedImages } from "./status.ts";
import { unixPathAnswers } from "../nbd/nbd-server.ts";

const GONE_WITHIN_MS = 15_000;

/** "none": nothing serves NAME here; "retired": a server of the moved-away disk was stopped. Throws for any other server of NAME. */
export async function retireMovedServer(runDir: string, name: string, images: readonly string[], log: Logger): Promise<"none" | "retired"> {
  const ctl = controlSocketPath(runDir, name);
  if (!(await unixPathAnswers(ctl))) return "none";
  const client = new ControlClient(ctl);
  const st = await client.status();
  if (st.handoff.state !== "moved")
    throw new ServeError(`${name} is already served in ${runDir} (a server answers on ${ctl})`, { hint: "stop that server, or receive under another --name or --run-dir" });
  const theirs = servedImages(st).map((p) => resolve(p));
  const ours = images.map((p) => resolve(p));
  if (theirs.join("\n") !== ours.join("\n"))
    throw new ServeError(`${name} is served in ${runDir} on ${theirs.join(" + ")}, fenced since the VM moved away; this migration would receive onto ${ours.join(" + ")}`, {
      hint: "receive onto the images that server holds (the VM's old disk here), or stop that server first",
    });
  log.info(`${name}'s old disk is served here by pid ${st.pid}, fenced since the VM moved away (${st.handoff.recording}); stopping it to receive the VM on its image`);
  await client.retire();
  const end = Date.now() + GONE_WITHIN_MS;
  while ((await unixPathAnswers(ctl)) || alive(st.pid)) {
    if (Date.now() > end) throw new ServeError(`the server of ${name} (pid ${st.pid}) was asked to stop and is still running after ${GONE_WITHIN_MS / 1000} s`, { hint: `stop it (kill ${st.pid}) and run this again` });
    await Bun.sleep(50);
  }
  return "retired";
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
