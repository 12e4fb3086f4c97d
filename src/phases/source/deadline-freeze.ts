// --timeout … --timeout-action freeze, kept mid-bulk (issue 33). An operator with a
// maintenance window expects the VM to stop being live at the deadline and the rest to be
// copied frozen; Nova's live_migration_timeout_action = force_complete is the anchor. The
// catch-up already fences at the deadline, but a bulk copy that outlasts it (a WAN's takes
// hours) went on live: a 64 MiB bulk at 40 Mbit/s under --timeout 5s ran 11 s live.
//
// Storage only, the freeze is the fence: every later write is refused, and what is left of
// the bulk and the log is copied while nothing changes. The storage downtime counts from
// here. A failure before the barrier unfences (abort.ts: stage.fenced), as after the
// hand-off's own fence. A VM under a hypervisor would have to be paused, not fenced (a
// refused write is an I/O error in its guest): there the freeze still waits for the bulk's
// end.

import type { LiveRun } from "./live-run.ts";

/** Fences the source if the freeze deadline has passed mid-bulk (storage only); once. */
export async function freezeAtDeadline(run: LiveRun): Promise<void> {
  const d = run.deadline;
  if (d?.action !== "freeze" || performance.now() < d.at || run.stage.fenced || run.freezeDeferred) return;
  if (run.hv.kind !== "none") {
    run.freezeDeferred = true;
    run.o.log.warn(`--timeout ${d.text} reached during the bulk copy: a ${run.hv.kind} VM is frozen once the bulk copy ends`);
    return;
  }
  const recording = run.recording!.watch.recording;
  run.frozenAt = performance.now(); // before the request: the fence may apply before we hear back
  await run.ctl.fence({ recording, reason: `--timeout ${d.text} reached mid-bulk: frozen, the rest copied fenced` });
  run.stage.fenced = true;
  run.o.log.warn(`--timeout ${d.text} reached during the bulk copy: the source is fenced (the VM's writes are refused) and the rest is copied frozen`);
}

/** When the storage downtime began: the freeze, if it came mid-bulk, else the hand-off's fence. */
export function downtimeFrom(run: LiveRun, handoffFencedAt: number): number {
  return run.frozenAt ?? handoffFencedAt;
}
