// The live migration's stages, in the paper's order: record, connect, bulk, catch-up, pause,
// hand-off, complete. Each takes the run (what outlives an attempt) and what the stage before
// it produced, and returns what the next one needs. live.ts runs them, and owns the retry
// after a broken link, the abort before the point of no return and the recovery after it.

import { ControlError, ExitCode } from "../../errors.ts";
import { offeredDisks } from "../../disk/service/status.ts";
import type { Channel } from "../../net/channel.ts";
import { Compressor } from "../../net/compress.ts";
import { msg, type Ready } from "../../net/protocol.ts";
import { statSync } from "node:fs";
import { basename } from "node:path";
import { bulkResumeOffset } from "../base-hashes.ts";
import { sendBulk } from "../bulk.ts";
import { BULK_LEVEL, BulkThrottle } from "../bulk-throttle.ts";
import { CatchUp, type Converged } from "../catch-up.ts";
import { DeltaStreamer } from "../deltas.ts";
import { InitError } from "../errors.ts";
import { handOffStorage, type HandoffTimes } from "../handoff.ts";
import { sourceHandshake } from "../init.ts";
import { setUpRedirect } from "../redirect.ts";
import { RecordingWatch } from "../recording-watch.ts";
import { checkInterrupted, enter, type LiveRun, retireDeltas } from "./live-run.ts";
import { sampleServe, wireCount } from "./sampler.ts";
import { freezeAtDeadline } from "./deadline-freeze.ts";
import { CONNECT_TIMEOUT_MS, connectWithin, LaneGrowth, openLanes } from "./open-lanes.ts";
import { MAX_AUTO_STREAMS, type StreamsSetting, streamsFor } from "../../net/stream-count.ts";

/** HELLO's offer: what auto may open at most, or the number asked for. */
const offeredStreams = (s: StreamsSetting | undefined) => (s === "auto" ? MAX_AUTO_STREAMS : (s ?? 1));

/** One connection to the destination, shaken hands on. */
export interface Link {
  ch: Channel;
  ready: Ready;
  rttMs: number;
  /** One per connection: a new link may be another link (a resume over another path). */
  z: Compressor;
  /** --streams auto: opens the further connections once the bulk shows one is not enough. */
  grow?: LaneGrowth;
}

/** The catch-up that converged, and the delta stream it drains (the hand-off sends the rest). */
export interface CaughtUp {
  deltas: DeltaStreamer;
  catchUp: CatchUp;
  converged: Converged;
}

/**
 * Record mode starts before the first bulk byte is read, so no write can be missed. A serve
 * still recording for a source run that died is adopted: its log holds every write since that
 * run began, which is what a destination that got part of that run needs (the HELLO names the
 * log, so the destination can tell). Coalesce mode: the bulk copy's cursor at 0 from the first
 * write (recording.ts).
 */
export async function startRecording(run: LiveRun): Promise<void> {
  const { ctl, o } = run;
  await run.hv.prepare();
  // The paper's queue-length throttle only if asked for; else the controller's rate cap.
  await ctl.throttle(o.throttle ? { ...o.throttle, enabled: true } : { enabled: false });
  const rec = await ctl.startRecording({ owner: process.pid, maxLogBytes: o.maxLogBytes, rateCap: run.pacing.heldCap, bulkCursor: run.carried ? 0 : undefined, ranges: !!run.carried }).catch((cause) => {
    // The serve's refusal (another source migrates this disk, say) is the first line, not "aborted".
    if (cause instanceof ControlError && cause.exitCode === ExitCode.badInput)
      throw new InitError(cause.message.replace(/^POST \/v1\/record: /, ""), { exitCode: ExitCode.badInput, hint: `see \`wanmig status --name ${o.name}\`; one migration of a disk at a time` });
    throw cause;
  });
  const logPath = rec.path!;
  run.stage.recording = true;
  const watch = new RecordingWatch(rec.id!, (await ctl.status()).instance, run.check.digests, o.log);
  run.recording = { logPath, watch, sampler: sampleServe(ctl, o.onEvent, wireCount(() => run.ch)) };
  if (run.status.recording.active) o.log.warn(`adopting the delta log of an earlier source run that did not finish: ${logPath}`);
  o.log.info(`recording into ${logPath}`);
}

export async function connect(run: LiveRun, attempt: number): Promise<Link> {
  const { o, status } = run;
  let ch: Channel;
  try {
    ch = run.ch = await connectWithin(o.connect, CONNECT_TIMEOUT_MS);
  } catch (cause) {
    throw new InitError(`cannot connect to the destination${o.to ? ` ${o.to}` : ""}`, { cause, hint: "is `wanmig dest` waiting there? check --to, and the path between" });
  }
  const shookAt = performance.now();
  const offer = { name: o.name, size: status.size, disks: offeredDisks(status), blockSize: run.blockSize, recording: basename(run.recording!.logPath) };
  const timing: { welcomeMs?: number } = {};
  const ready = await sourceHandshake(ch, o.creds, { ...offer, streams: offeredStreams(o.streams) }, timing);
  // Two round trips (HELLO/WELCOME, AUTH/READY) and the destination's opening of its image: an upper bound.
  const rttMs = (performance.now() - shookAt) / 2;
  run.resume.connected();
  if (attempt > 0) noteResume(run, ready);
  const roundTripMs = timing.welcomeMs ?? rttMs;
  const lanes = { connect: o.connect, creds: o.creds, offer, log: o.log, rttMs };
  const announce = (streams: number) => {
    if (streams > 1) o.log.info(`sending over ${streams} connections (--streams ${o.streams}; round trip ${roundTripMs.toFixed(1)} ms)`);
  };
  // A fixed number opens now; auto waits for the bulk to show one stream bound by its window.
  if (o.streams !== "auto") announce(await openLanes(ch, ready, o.streams ?? 1, lanes));
  const grow =
    o.streams === "auto"
      ? new LaneGrowth(ch, roundTripMs, async () => announce(await openLanes(ch, ready, streamsFor("auto", roundTripMs, ch.rate && ch.rate.bytesPerSec), lanes)))
      : undefined;
  const z = new Compressor(o.compress, ch, rttMs);
  run.compressors.push(z);
  return { ch, ready, rttMs, z, grow };
}

/** A resumed connection: what the last one sent past where the destination got counts as sent again. */
function noteResume(run: LiveRun, ready: Ready): void {
  const from = ready.bulkOffset < run.status.size ? { bulk: bulkResumeOffset(ready.bulkOffset, run.blockSize) } : { seq: BigInt(ready.nextSeq) };
  const again = run.ledger.resume(from, run.attemptWire.at(-1) ?? 0);
  run.o.log.info(`resumed: destination has bulk up to ${ready.bulkOffset}, needs delta ${ready.nextSeq}; ${again} bytes of the last connection's cross again`);
}

/**
 * The image, from where the destination has it to its end, with the VM's writes held to a
 * share of the link meanwhile (bulk-throttle.ts). The throttle's cap is renewed until the
 * catch-up's first report: BULK_END can wait for the bulk's tail to drain (13 s on the WAN),
 * past the cap's 2 s lease.
 */
export async function copyBulk(run: LiveRun, { ch, ready, z, grow }: Link): Promise<void> {
  const { ctl, o, check, carried } = run;
  const { logPath, watch } = run.recording!;
  enter(run, "bulk");
  const bulkAt = performance.now();
  const paced = new BulkThrottle(ctl, watch, ch, run.pacing.heldCap);
  paced.start();
  try {
    const b = await sendBulk(ch, check.image, {
      from: bulkResumeOffset(ready.bulkOffset, run.blockSize),
      blockSize: run.blockSize,
      compress: z,
      base: ready.base,
      beforeChunk: async () => {
        checkInterrupted(run);
        await freezeAtDeadline(run);
        paced.check();
        grow?.check();
      },
      // Coalesce mode: what the VM writes ahead of the copy goes into the log without
      // its data (paper mode logs and sends every write, as the paper does).
      raiseCursor: carried ? async (offset) => void (await ctl.raiseCursor(watch.recording, offset)) : undefined,
      beforeRead: (offset) => {
        run.ledger.note({ bulk: offset }, ch.bytesSent);
        carried?.noteRead(offset, statSync(logPath).size);
      },
      afterRead: (offset, chunk) => check.digests.noteData(offset, chunk),
      onProgress: (p) => o.onEvent?.({ event: "progress", phase: "bulk", offset: p.offset, size: p.size, bytesSent: run.bulk.bytesSent + p.bytesSent, rateCap: paced.cap }),
    });
    run.pacing.ms = performance.now() - bulkAt;
    // The catch-up's first link rate: as measured under backlog, else what the bulk averaged.
    run.pacing.linkBytesPerMs = paced.linkBytesPerMs() ?? (b.wireBytes > 4 * 1024 * 1024 ? b.wireBytes / run.pacing.ms : undefined);
    for (const k of ["bytesSent", "wireBytes", "zeroBlocks", "holeBytes", "dataBlocks", "baseBlocks"] as const) run.bulk[k] += b[k];
    await ch.send(msg.bulkEnd(run.status.size));
    o.log.info(`bulk copy done: ${b.dataBlocks} blocks sent, ${b.zeroBlocks} zero blocks skipped${ready.base ? `, ${b.baseBlocks} already in the destination's base` : ""}`);
  } finally {
    paced.stop();
    run.pacing.heldCap = paced.cap;
  }
  if (paced.engaged) run.pacing.throttled = true;
}

/** The deltas, streamed until the convergence controller says the rest fits the downtime budget. */
export async function catchUp(run: LiveRun, { ch, ready, rttMs, z }: Link): Promise<CaughtUp> {
  const { ctl, o, check, pacing } = run;
  enter(run, "deltas");
  retireDeltas(run);
  const deltas = (run.deltas = new DeltaStreamer(ch, run.recording!.logPath, {
    compress: z,
    from: BigInt(ready.nextSeq),
    coalesce: run.carried,
    onRecord: (r) => {
      run.ledger.note({ seq: r.seq }, ch.bytesSent);
      check.digests.markDirty(r.offset, r.length);
      run.tally.note(r.offset, r.length);
    },
    image: check.image,
    settle: () => ctl.status(),
  }));
  const settings = { budgetMs: run.budgetMs, rttMs, linkBytesPerMs: pacing.linkBytesPerMs, deadline: run.deadline, initialLevel: pacing.throttled ? BULK_LEVEL : 0, targetMs: pacing.ms };
  const catching = new CatchUp(ctl, deltas, check, run.status.size, run.recording!.watch, settings, (p) => o.onEvent?.({ event: "progress", phase: "deltas", ...p }));
  const converged = await catching.untilConverged(() => checkInterrupted(run));
  if (converged.frozen) o.log.warn(converged.frozen);
  return { deltas, catchUp: catching, converged };
}

/**
 * The VM pauses: its memory moves (the deltas keep streaming meanwhile), or, storage only, at
 * once. Phase 5 starts before the pause: both tunnel ends up, nothing routed into it yet.
 * Returns when the VM paused at the source.
 */
export async function pause(run: LiveRun, { ch }: Link, { catchUp }: CaughtUp): Promise<number> {
  const { o, hv } = run;
  if (o.redirect && !run.redirect) {
    enter(run, "redirect");
    run.redirect = await setUpRedirect(ch, o.redirect, { runDir: o.runDir, name: o.name }, o.log);
  }
  if (hv.kind !== "none") enter(run, "memory");
  let stopped = false;
  const { pausedAt } = await hv.moveMemory(
    async () => {
      checkInterrupted(run);
      await catchUp.round();
      if (!stopped) await holdPauseWhileTooMuchInFlight(run, catchUp);
    },
    {
      onStopped: () => {
        stopped = true;
        catchUp.vmStopped();
      },
      linkBytesPerSec: catchUp.linkBytesPerSec(),
    },
  );
  await catchUp.stopNoticed();
  if (hv.kind !== "none") o.onEvent?.({ event: "paused", at: Math.round(Date.now() - (performance.now() - pausedAt)) });
  if (hv.pointOfNoReturn === "memory-moved") {
    run.stage.vmGone = true;
    o.log.info(`point of no return: the VM has left (${hv.kind}); handing its disk over`);
  }
  return pausedAt;
}

/**
 * What the VM's pause would drain must fit the budget (switchover-hold.ts): the hypervisor
 * is kept from pausing it until then. Past the --timeout deadline nothing is held back: the
 * operator's window has the last word.
 */
async function holdPauseWhileTooMuchInFlight(run: LiveRun, catchUp: CatchUp): Promise<void> {
  if (!run.hv.holdPause) return;
  const look = catchUp.mayPause();
  const pastDeadline = run.deadline !== undefined && performance.now() >= run.deadline.at;
  if (look.gaveUp) run.o.log.warn(look.gaveUp);
  await run.hv.holdPause(look.hold && !pastDeadline);
}

/** The fence, the last deltas, the barrier and the digests' check (handoff.ts). */
export async function handOff(run: LiveRun, { ch }: Link, { deltas }: CaughtUp): Promise<HandoffTimes> {
  const { hv, stage } = run;
  checkInterrupted(run);
  enter(run, "handoff");
  stage.fenced = true; // from inside handOffStorage on, the fence may already be up
  run.tally.markFence();
  const h = await handOffStorage(ch, run.ctl, deltas, run.check, run.o.log, {
    watch: run.recording!.watch,
    to: run.o.to ?? "the destination",
    barrierIsPointOfNoReturn: hv.pointOfNoReturn === "fence",
    onBarrier: () => (stage.barrierSent = true),
  });
  // none: the fence was it; QEMU: from the continue request on, it may send the last state at once.
  stage.vmGone = true;
  if (hv.pointOfNoReturn === "complete") run.o.log.info(`point of no return: the destination verified the disk; letting the VM run there (${hv.kind})`);
  return h;
}
