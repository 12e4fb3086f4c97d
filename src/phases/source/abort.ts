// A live migration that failed for good: where it leaves the VM, and the error that says so.

import type { ControlClient } from "../../disk/service/control-client.ts";
import { ExitCode } from "../../errors.ts";
import { HypervisorError } from "../../hypervisor/errors.ts";
import type { SourceHypervisor } from "../../hypervisor/types.ts";
import type { Logger } from "../../log.ts";
import { peerAborted } from "../../net/channel.ts";
import { HandoffError, Interrupted, PhaseError } from "../errors.ts";

/** How far a live migration got: what a failure means depends on it. */
export interface LiveStage {
  recording: boolean;
  fenced: boolean;
  /** The BARRIER went out: from here the destination may verify and release its copy. */
  barrierSent: boolean;
  /** The hypervisor's point of no return passed (xl migrate returned; QEMU continued). */
  vmGone: boolean;
  /** The phase under way (its events' name): what a failure is reported under. */
  phase: string;
}

/**
 * Where a failed live migration leaves the VM. It can come back to the source when:
 *  - the hypervisor's point of no return has not passed, and
 *  - either the source is not fenced, or the destination cannot use its copy: it said it
 *    gives up (ERROR: it never releases then), or the VM cannot run there without us
 *    (QEMU before migrate-continue).
 * Then: unfence, stop recording, let the VM carry on at the source (exit 5; exit 6 when the
 * hypervisor left it shut down or paused here: stranded). Otherwise the source stays fenced
 * and the error says so (exit 6).
 */
export async function abortLive(ctl: ControlClient, hv: SourceHypervisor, stage: LiveStage, err: unknown, log: Logger): Promise<Error> {
  const destCannotRun = !!peerAborted(err) || hv.pointOfNoReturn === "complete";
  if (!stage.vmGone && (!stage.barrierSent || destCannotRun)) {
    let stranded: HypervisorError | undefined;
    try {
      // Unfenced before the VM may run again: a paused VM resumed onto a fenced disk would
      // have its next write refused (an I/O error in the guest). While it is paused here and
      // cannot run there (the hypervisor's point of no return not passed), nobody writes.
      if (stage.fenced) {
        await ctl.unfence(`the migration aborted before its point of no return: ${(err as Error).message}`);
        log.warn("source unfenced: the VM's disk is served here again, writable");
      }
      // (An interruption's own words say the VM runs here: not the cause to chain.)
      stranded = await hv.abort(err instanceof Interrupted ? new Error("interrupted by a signal") : err);
      if (stage.recording) await ctl.stopRecording();
    } catch (cause) {
      return new PhaseError("migration", "aborted, but the source could not be fully restored", {
        cause: new AggregateError([err, cause], "failed, then failed to restore the source"),
        pastPointOfNoReturn: true,
        hint: "check the VM and `wanmig status` at the source",
      });
    }
    // Whatever ended it (the destination's error may come before the hypervisor's own
    // failure), a VM that does not run here after the abort is never "still runs here".
    if (stranded) return new PhaseError("migration", stranded.message, { cause: stranded.cause, hint: stranded.hint, exitCode: ExitCode.unsafeState });
    if (err instanceof Interrupted) return err;
    const reason = peerAborted(err);
    if (reason) return new PhaseError(stage.phase, `the destination aborted: ${reason.reason}`, { cause: err, hint: "the migration did not happen; the VM runs at the source; fix the cause and run it again" });
    // The hypervisor's migration failed and left the VM not running here (or its state unread):
    // restored as above, but not "the VM still runs at the source".
    if (err instanceof HypervisorError && err.stranded) return new PhaseError("migration", err.message, { cause: err.cause, hint: err.hint, exitCode: ExitCode.unsafeState });
    return err instanceof PhaseError && err.exitCode !== ExitCode.unsafeState
      ? err
      : new PhaseError("migration", "aborted before the point of no return; the VM's disk is still served here, writable", { cause: err });
  }
  // Fenced, recording stays on: a re-run source needs the log to finish the hand-off.
  if (stage.recording && !stage.fenced) await ctl.stopRecording().catch(() => undefined);
  if (err instanceof HypervisorError && err.unsafe) return new HandoffError(err.message, { cause: err, pastPointOfNoReturn: true, hint: err.hint });
  return new HandoffError("failed after the point of no return", {
    cause: err,
    pastPointOfNoReturn: true,
    hint: stage.fenced
      ? "the source stays fenced with the hand-off unfinished; run the same `wanmig source` again: it finishes the hand-off with the destination, or rolls it back"
      : "the VM has left the source; check it at the destination",
  });
}

