// After `xl migrate` or `virsh migrate` failed: where is the domain? Both tools mean to
// resume it at the source, but do not always: xl gives up on a guest that would not suspend
// ("failed to suspend at sender") and leaves it as it is, seen shut down (`---sr-`); a QEMU
// that died under libvirt leaves its domain shut off. Exit 5 says the VM still runs at the
// source, so the source's hypervisor is asked, never assumed.

import type { Logger } from "../log.ts";
import { CommandError } from "../util/run.ts";
import { HypervisorError } from "./errors.ts";

/** The domain's state at the source, in its tool's words. */
export interface SourceDomainState {
  /** Running, or blocked/idle (running, waiting for work): the VM carries on here. */
  runs: boolean;
  /** The tool's words and what they mean, e.g. "xl list: ---sr- (shut down for reboot)". */
  says: string;
  /** The command that brings it back here, e.g. "`xl unpause vm1`". */
  restart: string;
}

/** A state query that hangs (virsh has been seen to) is a state that cannot be read. */
export const STATE_QUERY_TIMEOUT_MS = 30_000;

const DISK_HERE = "its disk is still served here, writable (it was never fenced), and the destination never runs a copy (the disk's hand-off did not start)";

/**
 * `failed`: what the migration command threw. Returns the error to throw instead: when the
 * domain runs here, the same failure with what was seen (an abort, exit 5); when it does not,
 * or its state cannot be read, a stranded HypervisorError naming it (exit 6). An interruption,
 * xl's own "state undefined" (unsafe) or a tool that could not be started (nothing began) is
 * returned as it is.
 */
export async function checkSourceAfterFailedMigrate(
  failed: unknown,
  o: { domain: string; look: string; query: () => Promise<SourceDomainState>; log: Logger },
): Promise<unknown> {
  if (!(failed instanceof HypervisorError) || failed.unsafe || !(failed.cause instanceof CommandError) || failed.cause.code === null) return failed;
  let st: SourceDomainState;
  try {
    st = await o.query();
  } catch (err) {
    const said = err instanceof Error ? `${err.message}${err.cause instanceof Error ? ` (${err.cause.message})` : ""}` : String(err);
    return new HypervisorError(`the migration failed, and domain ${o.domain}'s state here could not be read: it may not be running. ${said}`, {
      cause: failed,
      stranded: true,
      hint: `look for it on both hosts (${o.look}) and start or resume it in one place only, best here: ${DISK_HERE}`,
    });
  }
  if (st.runs) {
    o.log.info(`after the failed migration, domain ${o.domain} runs here (${st.says})`);
    return new HypervisorError(`${failed.message}; domain ${o.domain} runs here (${st.says})`, { cause: failed.cause, hint: failed.hint });
  }
  return new HypervisorError(`the migration failed and left domain ${o.domain} not running here (${st.says}): it runs on neither host`, {
    cause: failed,
    stranded: true,
    hint: `${st.restart} brings it back here; ${DISK_HERE}`,
  });
}
