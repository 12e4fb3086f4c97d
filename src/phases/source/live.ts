// The live migration's driver: the stages (stages.ts) in order, and in one place each, what
// a failure means: a broken link before the fence and before the memory moves is resumed on
// a new connection; one in the hand-off is settled with the destination (recover.ts); any
// other failure is an abort before the point of no return, or a fenced source after it
// (abort.ts).

import type { ControlClient } from "../../disk/service/control-client.ts";
import type { ServeStatus } from "../../disk/service/status.ts";
import { ExitCode } from "../../errors.ts";
import { HypervisorError } from "../../hypervisor/errors.ts";
import { peerAborted } from "../../net/channel.ts";
import { msg } from "../../net/protocol.ts";
import type { PhaseError } from "../errors.ts";
import type { HandoffTimes } from "../handoff.ts";
import { isLinkFailure } from "../link-failure.ts";
import { downtimeFrom } from "./deadline-freeze.ts";
import { settleHandoff } from "../recover.ts";
import { completeRedirect } from "../redirect.ts";
import { abortLive } from "./abort.ts";
import { enter, type LiveRun, newLiveRun, retireDeltas } from "./live-run.ts";
import { finish } from "./metrics.ts";
import { recoveryOptions, redirectEvents, type SourceOptions, type SourceResult } from "./options.ts";
import { type CaughtUp, catchUp, connect, copyBulk, handOff, type Link, pause, startRecording } from "./stages.ts";

export async function live(ctl: ControlClient, status: ServeStatus, blockSize: number, o: SourceOptions, t0: number): Promise<SourceResult> {
  const run = newLiveRun(ctl, status, blockSize, o, t0);
  enter(run, "init");
  for (let attempt = 0; ; attempt++) {
    try {
      return await attemptOnce(run, attempt);
    } catch (caught) {
      const err = await closeLink(run, caught);
      // Before the fence, while memory has not started to move, a broken link is resumed (resume-policy.ts).
      const pause = !run.stage.fenced && !run.stage.vmGone && isLinkFailure(err) && run.recording ? run.resume.broke(performance.now()) : undefined;
      if (pause !== undefined) {
        o.log.warn(`link to the destination broke (${(err as Error).message}); reconnecting in ${pause} ms`);
        o.onEvent?.({ event: "reconnect", attempt: attempt + 1 });
        await Bun.sleep(pause);
        continue;
      }
      return giveUp(run, err, attempt);
    }
  }
}

async function attemptOnce(run: LiveRun, attempt: number): Promise<SourceResult> {
  if (!run.recording) await startRecording(run);
  const link = await connect(run, attempt);
  if (link.ready.bulkOffset < run.status.size) await copyBulk(run, link);
  const caught = await catchUp(run, link);
  const pausedAt = await pause(run, link, caught);
  const handed = await handOff(run, link, caught);
  return complete(run, link, caught, { pausedAt, handed, attempt });
}

/** The VM runs at the destination: the hypervisor lets it go, the redirect completes, the record of the move is written. */
async function complete(run: LiveRun, link: Link, { catchUp, converged }: CaughtUp, at: { pausedAt: number; handed: HandoffTimes; attempt: number }): Promise<SourceResult> {
  const { o, ctl, hv, redirect } = run;
  const h = at.handed;
  await hv.complete();
  const resumedAt = performance.now();
  if (redirect) await completeRedirect(redirect, o.redirect!, o.log, redirectEvents(o));
  run.recording!.sampler.stop();
  const end = await ctl.status();
  await ctl.stopRecording({ digest: h.digest, to: o.to });
  retireDeltas(run);
  const metrics = finish(o, {
    t0: run.t0,
    fencedAt: downtimeFrom(run, h.fencedAt),
    doneAt: h.doneAt,
    parts: h.parts,
    pausedAt: hv.kind === "none" ? undefined : at.pausedAt,
    resumedAt,
    bulk: run.bulk,
    compressors: run.compressors,
    deltas: run.deltaStats,
    finalDeltas: h.finalDeltas,
    bytesOnWire: run.wire + link.ch.bytesSent,
    bytesResent: run.ledger.resent,
    attemptWire: [...run.attemptWire, link.ch.bytesSent],
    streams: link.ch.streams,
    throttleSteps: Math.max(end.throttle.maxLevel, catchUp.throttleSteps, run.pacing.throttled ? 1 : 0),
    pauseDrain: hv.kind === "none" ? undefined : end.throttle.pauseDrain,
    pauseHeldBackMs: hv.holdPause ? catchUp.pauseHeldMs : undefined,
    converged: { estimateMs: converged.estimate.totalMs, budgetMs: run.budgetMs, frozen: converged.frozen },
    reconnects: at.attempt,
    disks: run.tally,
  });
  link.ch.close();
  hv.close();
  return { metrics, redirect };
}

/**
 * The attempt's connection, after a failure: the destination hears why (unless the link or
 * the destination itself failed), and the error to act on is the destination's own when it
 * gave up first.
 */
async function closeLink(run: LiveRun, caught: unknown): Promise<unknown> {
  let err = caught;
  const ch = run.ch;
  if (ch) {
    // A broken write can race the destination's last words: give them a moment to land.
    if (isLinkFailure(err)) await Bun.sleep(50);
    if (peerAborted(ch.failedWith) && !peerAborted(err)) err = ch.failedWith;
    // A failure of ours (not the link's, not theirs): tell the destination, so it stops
    // waiting for a resume and exits, keeping what it has as a base for the next run.
    else if (!isLinkFailure(err) && !ch.errorSent) await ch.send(msg.error(`the source gave up: ${(err as Error).message}`)).catch(() => undefined);
    run.wire += ch.bytesSent;
    run.attemptWire.push(ch.bytesSent);
    // Last words go out before the stream ends: close() would drop what still waits in
    // our queue behind the bulk (a destination that missed them waits for a resume).
    if (ch.errorSent) await ch.shutdown();
    else ch.close();
    run.ch = undefined; // counted: a failed reconnect must not count it again
  }
  retireDeltas(run);
  return err;
}

/** No resume: settle a broken hand-off with the destination, or abort (abort.ts). Throws, unless the hand-off settles. */
async function giveUp(run: LiveRun, err: unknown, attempt: number): Promise<SourceResult> {
  const { o, hv, stage, redirect } = run;
  if (err instanceof HypervisorError && err.unsafe) stage.vmGone = true; // never resume a VM that may run elsewhere
  run.recording?.sampler.stop();
  // The link broke in the hand-off (the destination may have been killed): settle it
  // with the destination, reconnecting, rather than leave it unfinished. With QEMU
  // before its continue, rolling back alone is safe: that is abortLive's.
  if (stage.fenced && isLinkFailure(err) && !(hv.pointOfNoReturn === "complete" && !stage.vmGone)) {
    const settled = await settleBrokenHandoff(run, err, attempt);
    if (settled) return settled;
  }
  // The VM stays (or comes back) here: its old address must not go into a tunnel.
  if (redirect && !stage.vmGone) await redirect.teardown().catch((e) => o.log.error(`redirect: ${(e as Error).message}`));
  const final = await abortLive(run.ctl, hv, stage, err, o.log);
  hv.close();
  throw final;
}

/** The hand-off left unfinished by a broken link, finished or rolled back with the destination; undefined when the serve does not say unfinished. */
async function settleBrokenHandoff(run: LiveRun, err: unknown, attempt: number): Promise<SourceResult | undefined> {
  const { o, ctl, hv, redirect } = run;
  const st = await ctl.status().catch(() => undefined);
  if (st?.handoff.state !== "unfinished") return undefined;
  o.log.warn(`the link broke in the hand-off (${(err as Error).message}); settling it with the destination`);
  try {
    const r = await settleHandoff(ctl, st, recoveryOptions(o, hv, run.blockSize));
    if (redirect) await completeRedirect(redirect, o.redirect!, o.log, redirectEvents(o));
    const now = performance.now();
    const figures = { t0: run.t0, fencedAt: now, doneAt: now, bulk: run.bulk, compressors: run.compressors, deltas: run.deltaStats };
    const metrics = finish(o, { ...figures, finalDeltas: r.finalDeltas, bytesOnWire: run.wire, bytesResent: run.ledger.resent, attemptWire: run.attemptWire, throttleSteps: st.throttle.maxLevel, reconnects: attempt + 1 });
    return { metrics, redirect };
  } catch (settled) {
    if (redirect && (settled as PhaseError).exitCode !== ExitCode.unsafeState) await redirect.teardown().catch(() => undefined);
    throw settled;
  } finally {
    hv.close();
  }
}
