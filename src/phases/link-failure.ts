// Which failures are the link's: the stream to the destination broke (a resume may follow,
// and the destination, which saw it break too, waits for one). Everything else ends the
// migration, and the destination must be told, or it waits for a resume that never comes.
//
// The socket errors (ECONNRESET, ECONNREFUSED, EPIPE) say nothing of which socket: our
// serve's control socket gives them too when the serve is killed or restarted, and so does a
// hypervisor's (QMP) or a tool's. Those are failures of another process, not of the link: the
// cause chain is read only up to the first error that names such a process.

import { ChannelClosed } from "../net/channel.ts";
import { ControlError } from "../errors.ts";
import { HypervisorError } from "../hypervisor/errors.ts";
import { CommandError } from "../util/run.ts";

const LINK_ERRNOS = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE"]);

export function isLinkFailure(err: unknown): boolean {
  for (let e = err; e; e = (e as Error).cause) {
    if (e instanceof ChannelClosed) return true;
    if (e instanceof ControlError || e instanceof HypervisorError || e instanceof CommandError) return false;
    const code = (e as NodeJS.ErrnoException).code;
    if (code && LINK_ERRNOS.has(code)) return true;
  }
  return false;
}
