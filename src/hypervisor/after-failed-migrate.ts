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

export interface LookHere {
  domain: string;
  /** How to look on both hosts, e.g. "xl list". */
  look: string;
  query: () => Promise<SourceDomainState>;
  log: Logger;
}

/** The domain's state here, or the error of a query that failed (a state that cannot be read). */
async function lookHere(o: LookHere): Promise<SourceDomainState | { unread: string }> {
  try {
    return await o.query();
  } catch (err) {
    return { unread: err instanceof Error ? `${err.message}${err.cause instanceof Error ? ` (${err.cause.message})` : ""}` : String(err) };
  }
}

/** `cause`: what ended the migration; `how`: "failed", or "was given up" (we stopped it). */
function stranded(st: SourceDomainState | { unread: string }, cause: unknown, o: LookHere, how = "failed"): HypervisorError {
  if ("unread" in st)
    return new HypervisorError(`the migration ${how}, and domain ${o.domain}'s state here could not be read: it may not be running. ${st.unread}`, {
      cause,
      stranded: true,
      hint: `look for it on both hosts (${o.look}) and start or resume it in one place only, best here: ${DISK_HERE}`,
    });
  return new HypervisorError(`the migration ${how} and left domain ${o.domain} not running here (${st.says}): it runs on neither host`, {
    cause,
    stranded: true,
    hint: `${st.restart} brings it back here; ${DISK_HERE}`,
  });
}

/**
 * `failed`: what the migration command threw. Returns the error to throw instead: when the
 * domain runs here, the same failure with what was seen (an abort, exit 5); when it does not,
 * or its state cannot be read, a stranded HypervisorError naming it (exit 6). An interruption,
 * xl's own "state undefined" (unsafe) or a tool that could not be started (nothing began) is
 * returned as it is.
 */
export async function checkSourceAfterFailedMigrate(failed: unknown, o: LookHere): Promise<unknown> {
  if (!(failed instanceof HypervisorError) || failed.unsafe || !(failed.cause instanceof CommandError) || failed.cause.code === null) return failed;
  const st = await lookHere(o);
  if ("unread" in st || !st.runs) return stranded(st, failed, o);
  o.log.info(`after the failed migration, domain ${o.domain} runs here (${st.says})`);
  return new HypervisorError(`${failed.message}; domain ${o.domain} runs here (${st.says})`, { cause: failed.cause, hint: failed.hint });
}

/**
 * After the source gave up on a migration whose command it had started (it was stopped, or
 * had failed): undefined when the domain runs here, else the stranded error to report. Asked
 * whatever ended the migration (the destination's error may come before the command's own
 * failure), so that no abort claims a VM that runs nowhere.
 */
export async function strandedUnlessRunning(cause: unknown, o: LookHere): Promise<HypervisorError | undefined> {
  const st = await lookHere(o);
  if ("unread" in st || !st.runs) return stranded(st, cause, o, "was given up");
  o.log.info(`the migration was given up; domain ${o.domain} runs here (${st.says})`);
  return undefined;
}
