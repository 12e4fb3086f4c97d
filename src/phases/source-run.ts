// The source's whole migration, phase by phase, with the abort discipline:
// a failure before the point of no return stops recording and leaves the disk
// served and writable; after it, the disk stays fenced and the error says so.

import { ControlClient } from "../disk/control-client.ts";
import { controlSocketPath, offeredDisks, servedImages } from "../disk/disk-service.ts";
import { type Channel, peerAborted } from "../net/channel.ts";
import { type CompressSetting, Compressor } from "../net/compress.ts";
import type { ServeStatus } from "../disk/disk-service.ts";
import type { ThrottleParams } from "../disk/throttle-policy.ts";
import type { Logger } from "../log.ts";
import { sendBulk } from "./bulk.ts";
import { DeltaStreamer } from "./deltas.ts";
import { InitError, PhaseError } from "./errors.ts";
import { awaitDone, handOffStorage, type HandoffTimes } from "./handoff.ts";
import { CatchUp } from "./catch-up.ts";
import { BULK_LEVEL, BulkThrottle, PROVISIONAL_CAP } from "./bulk-throttle.ts";
import { NoSourceHypervisor } from "../hypervisor/none.ts";
import type { SourceHypervisor } from "../hypervisor/types.ts";
import { HypervisorError } from "../hypervisor/errors.ts";
import type { Redirect } from "../redirect/redirect.ts";
import { completeRedirect, type RedirectOptions, setUpRedirect } from "./redirect.ts";
import { ControlError, ExitCode } from "../errors.ts";
import { BulkReadLog } from "./coalesce.ts";
import { statSync } from "node:fs";
import { basename } from "node:path";
import { bulkResumeOffset } from "./base-hashes.ts";
import { RegionDigests } from "../disk/region-digest.ts";
import { msg } from "../net/protocol.ts";
import { DeltasError, HandoffError, Interrupted } from "./errors.ts";
import { type Credentials, sourceHandshake } from "./init.ts";
import { type RecoveryOptions, settleHandoff } from "./recover.ts";
import { RecordingWatch } from "./recording-watch.ts";
import { isLinkFailure } from "./link-failure.ts";
import { type DiskFigures, DiskTally } from "./disk-tally.ts";

export interface SourceOptions {
  name: string;
  runDir: string;
  connect: () => Promise<Channel>;
  creds: Credentials;
  blockSize?: number;
  compress: CompressSetting;
  /** live (the paper's) or freeze-and-copy (the baseline it is compared with). */
  mode?: "live" | "freeze-and-copy";
  /** paper: send every delta; coalesce: drop those the bulk copy carries or a later one covers. */
  deltas?: "paper" | "coalesce";
  /** Tunnel the VM's old address and update DNS (phase 5), if given. */
  redirect?: RedirectOptions;
  /** Polled at every step before the point of no return: true once the operator asked to stop (Ctrl-C). */
  interrupted?: () => boolean;
  /** Who moves the memory (default: none, storage only). */
  hypervisor?: SourceHypervisor;
  /** Where the destination is (the record of the move at the source names it). */
  to?: string;
  /**
   * --throttle-threshold / --throttle-delay: the paper's queue-length throttle, set on the
   * serve before recording starts. Without them the convergence controller throttles.
   */
  throttle?: Partial<ThrottleParams>;
  /** --max-downtime (ms): the budget for the hand-off's work; one round trip comes on top. Default 50. */
  maxDowntimeMs?: number;
  /** --timeout and --timeout-action: from the start of the migration. */
  timeout?: { ms: number; action: "abort" | "freeze"; text: string };
  /** --max-log-size (bytes): the delta log's bound, if less than its share of free space. */
  maxLogBytes?: number;
  log: Logger;
  onEvent?: (e: Record<string, unknown>) => void;
}

export interface MigrationMetrics {
  migrationTimeMs: number;
  /**
   * The VM's downtime as the source sees it: paused at the source until the hypervisor
   * reported the move complete (storage only: the storage downtime). The destination logs
   * when its VM actually runs; the guest's own view is the truest (see the real-VM test).
   */
  downtimeMs: number;
  storageDowntimeMs: number;
  /** The storage downtime's parts (live mode). */
  storageDowntimeParts?: HandoffTimes["parts"];
  /** What the convergence controller expected the storage downtime to be when it fenced (live mode). */
  estimatedStorageDowntimeMs?: number;
  /** The budget it fenced against (--max-downtime; one round trip comes on top). */
  maxDowntimeMs?: number;
  /** --timeout-action freeze: why the fence came before the estimate fit. */
  frozen?: string;
  bulkBytes: number;
  bulkWireBytes: number;
  bulkZeroBlocks: number;
  /** Image bytes in holes, skipped without being read. */
  bulkHoleBytes: number;
  /** Blocks the destination's base image already held, so they were not sent. */
  bulkBaseBlocks: number;
  /** Image bytes (bulk and deltas) sent at each zstd level; "0": as they were. */
  compressLevels: Record<string, number>;
  /** Bulk bytes (of those) sent as pieces of one long-window zstd stream (slow links). */
  bulkStreamedBytes: number;
  deltaCount: number;
  deltaBytes: number;
  deltaWireBytes: number;
  /** Deltas not sent: the bulk copy carried them, or a later write covered them (coalesce). */
  deltasSkipped: number;
  /** Copy passes: how many, and the image bytes they sent (part of deltaBytes). */
  copyPasses: number;
  copiedBytes: number;
  /** Deltas logged as ranges (WRITTEN) and sent with the image's content, and the control calls made to settle one. */
  rangeDeltas: number;
  settleCalls: number;
  finalDeltas: number;
  bytesOnWire: number;
  deltaRatePerSec: number;
  throttleSteps: number;
  /** Broken links resumed during this migration. */
  reconnects: number;
  /** Each disk's deltas, and its share of the hand-off's (live mode). */
  disks?: DiskFigures[];
}

/** The metrics, and the network redirect still up (the caller waits for it to go idle). */
export interface SourceResult {
  metrics: MigrationMetrics;
  redirect?: Redirect;
}

function phaseEvent(o: SourceOptions, phase: string): void {
  o.onEvent?.({ event: "phase", phase, at: Date.now() });
}

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
    return settle(retrying, status, blockSize(o), o, t0);
  }
  // Not 5: the VM does not run here with a writable disk; there is nothing to migrate from here.
  if (status.mode === "fenced")
    throw new InitError(`${o.name} is fenced here (${status.handoff.text})`, { hint: "it has moved away; migrate it from where it runs now", exitCode: ExitCode.badInput });
  if (o.mode === "freeze-and-copy" && status.recording.active)
    throw new InitError(`${o.name} is recording for a live migration`, { hint: "wait for it to finish; or, if its source died, stop recording first (POST /v1/record stop)" });
  const bs = blockSize(o);

  if (o.mode === "freeze-and-copy") {
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
    return freezeAndCopy(ch, retrying, status, bs, o, t0);
  }
  return live(retrying, status, bs, o, t0);
}

/** --max-downtime's default, as QEMU's downtime-limit is 300 ms and virsh's is settable: our hand-off is small. */
export const DEFAULT_MAX_DOWNTIME_MS = 50;

/** How long the source waits for a serve that went away (a restart) before it gives up. */
const SERVE_RESTART_GRACE_MS = 30_000;

function blockSize(o: SourceOptions): number {
  return o.blockSize ?? 64 * 1024;
}

function recoveryOptions(o: SourceOptions, hv: SourceHypervisor, bs: number): RecoveryOptions {
  return { name: o.name, connect: o.connect, creds: o.creds, compress: o.compress, blockSize: bs, hypervisor: hv, log: o.log, to: o.to ?? "the destination", backoffMs: RESUME_BACKOFF_MS };
}

/** A re-run source that finds the hand-off unfinished: finish it or roll it back, with the destination. */
async function settle(ctl: ControlClient, status: ServeStatus, bs: number, o: SourceOptions, t0: number): Promise<SourceResult> {
  phaseEvent(o, "handoff");
  const hv = o.hypervisor ?? new NoSourceHypervisor();
  try {
    const r = await settleHandoff(ctl, status, recoveryOptions(o, hv, bs));
    const now = performance.now();
    const metrics = finish(o, {
      t0,
      fencedAt: t0,
      doneAt: now,
      bulk: { bytesSent: 0, wireBytes: 0, zeroBlocks: 0, baseBlocks: 0, holeBytes: 0 },
      deltas: NO_DELTAS,
      finalDeltas: r.finalDeltas,
      bytesOnWire: r.bytesOnWire,
      throttleSteps: 0,
      reconnects: 0,
    });
    return { metrics };
  } finally {
    hv.close();
  }
}

interface DeltaTotals {
  sent: number;
  bytes: number;
  wireBytes: number;
  skipped: number;
  copyPasses: number;
  copiedBytes: number;
  ranges: number;
  settleCalls: number;
}
const NO_DELTAS: DeltaTotals = { sent: 0, bytes: 0, wireBytes: 0, skipped: 0, copyPasses: 0, copiedBytes: 0, ranges: 0, settleCalls: 0 };

function addDeltaStats(a: DeltaTotals, d: DeltaStreamer): DeltaTotals {
  return {
    sent: a.sent + d.sent,
    bytes: a.bytes + d.bytes,
    wireBytes: a.wireBytes + d.wireBytes,
    skipped: a.skipped + d.skipped,
    copyPasses: a.copyPasses + d.copyPasses,
    copiedBytes: a.copiedBytes + d.copiedBytes,
    ranges: a.ranges + d.rangesSent,
    settleCalls: a.settleCalls + d.settleCalls,
  };
}

function levelTotals(zs: Compressor[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const z of zs) for (const [level, bytes] of z.rawByLevel) out[level] = (out[level] ?? 0) + bytes;
  return out;
}

/** The final figures of a migration, in the paper's terms; also sent as the "done" event. */
function finish(
  o: SourceOptions,
  m: {
    t0: number;
    fencedAt: number;
    doneAt: number;
    parts?: HandoffTimes["parts"];
    converged?: { estimateMs: number; budgetMs: number; frozen?: string };
    /** With a hypervisor: when the VM paused at the source, and when the hypervisor said it had moved. */
    pausedAt?: number;
    resumedAt?: number;
    bulk: { bytesSent: number; wireBytes: number; zeroBlocks: number; baseBlocks: number; holeBytes: number };
    /** The compressors of every connection. */
    compressors?: Compressor[];
    deltas: DeltaTotals;
    finalDeltas: number;
    bytesOnWire: number;
    throttleSteps: number;
    reconnects: number;
    disks?: DiskTally;
  },
): MigrationMetrics {
  const migrationTimeMs = m.doneAt - m.t0;
  const metrics: MigrationMetrics = {
    migrationTimeMs: Math.round(migrationTimeMs),
    downtimeMs: Math.round(m.pausedAt !== undefined && m.resumedAt !== undefined ? m.resumedAt - m.pausedAt : m.doneAt - m.fencedAt),
    storageDowntimeMs: Math.round(m.doneAt - m.fencedAt),
    storageDowntimeParts: m.parts,
    estimatedStorageDowntimeMs: m.converged && Math.round(m.converged.estimateMs),
    maxDowntimeMs: m.converged?.budgetMs,
    frozen: m.converged?.frozen,
    bulkBytes: m.bulk.bytesSent,
    bulkWireBytes: m.bulk.wireBytes,
    bulkZeroBlocks: m.bulk.zeroBlocks,
    bulkHoleBytes: m.bulk.holeBytes,
    bulkBaseBlocks: m.bulk.baseBlocks,
    compressLevels: levelTotals(m.compressors ?? []),
    bulkStreamedBytes: (m.compressors ?? []).reduce((a, z) => a + z.streamedRaw, 0),
    deltaCount: m.deltas.sent,
    deltaBytes: m.deltas.bytes,
    deltaWireBytes: m.deltas.wireBytes,
    deltasSkipped: m.deltas.skipped,
    copyPasses: m.deltas.copyPasses,
    copiedBytes: m.deltas.copiedBytes,
    rangeDeltas: m.deltas.ranges,
    settleCalls: m.deltas.settleCalls,
    finalDeltas: m.finalDeltas,
    bytesOnWire: m.bytesOnWire,
    deltaRatePerSec: Math.round((m.deltas.sent / migrationTimeMs) * 1000),
    throttleSteps: m.throttleSteps,
    reconnects: m.reconnects,
    disks: m.disks?.figures(),
  };
  o.onEvent?.({ event: "done", ...metrics });
  return metrics;
}

/** Reconnects after a broken link: attempts and the pause before each (ms). */
const RESUME_BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];

/**
 * Every 250 ms while recording (freeze-and-copy: from its bulk copy on): the serve's delta
 * queue and throttle level, and the bytes handed to the link so far, as "sample" events
 * (the report's curves: the queue and the throttle, which the bulk phase would not show
 * otherwise, deltas being shipped after it; and the throughput). The throughput is the
 * wire's (after compression, after --bandwidth), read on this clock: the bulk's progress
 * counts a whole 4 MiB chunk of image bytes, before compression, when it is queued, which
 * drew 16 MiB/s and 0 in turn and peaks of compressible data far above the link.
 */
function sampleServe(retrying: ControlClient, onEvent?: (e: Record<string, unknown>) => void, link?: () => { wireBytes: number; linkBytesPerSec?: number }): { stop(): void } {
  if (!onEvent) return { stop() {} };
  // A sample missed while the serve restarts is only a gap in the curve: no retries piling up.
  const ctl = new ControlClient(retrying.socketPath);
  const timer = setInterval(() => {
    // Stamped at the tick, with the link's count then, not when the serve answers.
    const at = Date.now();
    const wire = link?.();
    ctl.status().then(
      (st) => onEvent({ event: "sample", at, ...wire, deltaQueue: st.throttle.deltaQueue, throttleLevel: st.throttle.level, recordedDeltas: st.recording.records }),
      () => wire && onEvent({ event: "sample", at, ...wire }),
    );
  }, 250);
  return { stop: () => clearInterval(timer) };
}

/** Wire bytes handed to the link so far, over every connection `current` has been (a resume opens another). */
function wireCount(current: () => Channel | undefined): () => { wireBytes: number; linkBytesPerSec?: number } {
  let before = 0;
  let counted: Channel | undefined;
  return () => {
    const ch = current();
    if (ch !== counted) {
      before += counted?.handedBytes() ?? 0;
      counted = ch;
    }
    return { wireBytes: before + (ch?.handedBytes() ?? 0), linkBytesPerSec: ch?.rate?.bytesPerSec };
  };
}

/** How far a live migration got: what a failure means depends on it. */
interface LiveStage {
  recording: boolean;
  fenced: boolean;
  /** The BARRIER went out: from here the destination may verify and release its copy. */
  barrierSent: boolean;
  /** The hypervisor's point of no return passed (xl migrate returned; QEMU continued). */
  vmGone: boolean;
  /** The phase under way (its events' name): what a failure is reported under. */
  phase: string;
}

async function live(ctl: ControlClient, status: ServeStatus, blockSize: number, o: SourceOptions, t0: number): Promise<SourceResult> {
  const emit = (phase: string) => {
    stage.phase = phase;
    phaseEvent(o, phase);
  };
  const hv = o.hypervisor ?? new NoSourceHypervisor();
  const stage: LiveStage = { recording: false, fenced: false, barrierSent: false, vmGone: false, phase: "init" };
  let watch: RecordingWatch | undefined;
  let logPath: string | undefined;
  let deltas: DeltaStreamer | undefined;
  let ch: Channel | undefined;
  let redirect: Redirect | undefined;
  let sampler: { stop(): void } | undefined;
  const budgetMs = o.maxDowntimeMs ?? DEFAULT_MAX_DOWNTIME_MS;
  const deadline = o.timeout && { at: t0 + o.timeout.ms, action: o.timeout.action, text: o.timeout.text };
  const checkInterrupted = () => {
    if (o.interrupted?.() && !stage.vmGone) throw new Interrupted();
    // Abort needs no converged state: it can cut the bulk copy short too. (freeze waits for the bulk.)
    if (deadline?.action === "abort" && performance.now() >= deadline.at && !stage.fenced)
      throw new DeltasError(`the migration did not finish within --timeout ${deadline.text}`);
  };
  let rttMs = 0;
  let bulkRate: number | undefined;
  let bulkThrottled = false;
  /** The VM's write cap for the next bulk attempt until its first verdict: provisional, then what the last attempt found. */
  let heldCap: number | undefined = PROVISIONAL_CAP;
  let bulkMs = 0;
  const bulk = { bytesSent: 0, wireBytes: 0, zeroBlocks: 0, dataBlocks: 0, baseBlocks: 0, holeBytes: 0 };
  const carried = o.deltas === "paper" ? undefined : new BulkReadLog();
  const check = { image: servedImages(status), digests: new RegionDigests(status.size) };
  const tally = new DiskTally(status.disks);
  let wire = 0;
  let deltaStats = NO_DELTAS;
  const compressors: Compressor[] = [];
  emit("init");
  for (let attempt = 0; ; attempt++) {
    try {
      if (!logPath) {
        await hv.prepare();
        // The paper's queue-length throttle only if asked for; else the controller's rate cap.
        await ctl.throttle(o.throttle ? { ...o.throttle, enabled: true } : { enabled: false });
        // Record mode starts before the first bulk byte is read, so no write can be missed.
        // A serve still recording for a source run that died is adopted: its log holds
        // every write since that run began, which is what a destination that got part of
        // that run needs (the HELLO names the log, so the destination can tell).
        // Coalesce mode: the bulk copy's cursor at 0 from the first write (recording.ts).
        const rec = await ctl.startRecording({ owner: process.pid, maxLogBytes: o.maxLogBytes, rateCap: heldCap, bulkCursor: carried ? 0 : undefined, ranges: !!carried }).catch((cause) => {
          // The serve's refusal (another source migrates this disk, say) is the first line, not "aborted".
          if (cause instanceof ControlError && cause.exitCode === ExitCode.badInput)
            throw new InitError(cause.message.replace(/^POST \/v1\/record: /, ""), { exitCode: ExitCode.badInput, hint: `see \`wanmig status --name ${o.name}\`; one migration of a disk at a time` });
          throw cause;
        });
        logPath = rec.path!;
        stage.recording = true;
        watch = new RecordingWatch(rec.id!, (await ctl.status()).instance, check.digests, o.log);
        sampler = sampleServe(ctl, o.onEvent, wireCount(() => ch));
        if (status.recording.active) o.log.warn(`adopting the delta log of an earlier source run that did not finish: ${logPath}`);
        o.log.info(`recording into ${logPath}`);
      }
      try {
        ch = await o.connect();
      } catch (cause) {
        throw new InitError(`cannot connect to the destination${o.to ? ` ${o.to}` : ""}`, { cause, hint: "is `wanmig dest` waiting there? check --to, and the path between" });
      }
      const shookAt = performance.now();
      const ready = await sourceHandshake(ch, o.creds, { name: o.name, size: status.size, disks: offeredDisks(status), blockSize, recording: basename(logPath) });
      // Two round trips (HELLO/WELCOME, AUTH/READY) and the destination's opening of its image: an upper bound.
      rttMs = (performance.now() - shookAt) / 2;
      if (attempt > 0) o.log.info(`resumed: destination has bulk up to ${ready.bulkOffset}, needs delta ${ready.nextSeq}`);
      // One per connection: a new link may be another link (a resume over another path).
      const z = new Compressor(o.compress, ch, rttMs);
      compressors.push(z);

      if (ready.bulkOffset < status.size) {
        emit("bulk");
        const bulkAt = performance.now();
        const paced = new BulkThrottle(ctl, watch!, ch, heldCap);
        paced.start();
        // The throttle's cap is renewed until the catch-up's first report: BULK_END can wait
        // for the bulk's tail to drain (13 s on the WAN), past the cap's 2 s lease.
        try {
          const b = await sendBulk(ch, check.image, {
            from: bulkResumeOffset(ready.bulkOffset, blockSize),
            blockSize,
            compress: z,
            base: ready.base,
            beforeChunk: () => {
              checkInterrupted();
              paced.check();
            },
            // Coalesce mode: what the VM writes ahead of the copy goes into the log without
            // its data (paper mode logs and sends every write, as the paper does).
            raiseCursor: carried ? async (offset) => void (await ctl.raiseCursor(watch!.recording, offset)) : undefined,
            beforeRead: (offset) => carried?.noteRead(offset, statSync(logPath!).size),
            afterRead: (offset, chunk) => check.digests.noteData(offset, chunk),
            onProgress: (p) => {
              o.onEvent?.({ event: "progress", phase: "bulk", offset: p.offset, size: p.size, bytesSent: bulk.bytesSent + p.bytesSent, rateCap: paced.cap });
            },
          });
          bulkMs = performance.now() - bulkAt;
          // The catch-up's first link rate: as measured under backlog, else what the bulk averaged.
          bulkRate = paced.linkBytesPerMs() ?? (b.wireBytes > 4 * 1024 * 1024 ? b.wireBytes / bulkMs : undefined);
          bulk.bytesSent += b.bytesSent;
          bulk.wireBytes += b.wireBytes;
          bulk.zeroBlocks += b.zeroBlocks;
          bulk.holeBytes += b.holeBytes;
          bulk.dataBlocks += b.dataBlocks;
          bulk.baseBlocks += b.baseBlocks;
          await ch.send(msg.bulkEnd(status.size));
          o.log.info(`bulk copy done: ${b.dataBlocks} blocks sent, ${b.zeroBlocks} zero blocks skipped${ready.base ? `, ${b.baseBlocks} already in the destination's base` : ""}`);
        } finally {
          paced.stop();
          heldCap = paced.cap;
        }
        if (paced.engaged) bulkThrottled = true;
      }

      emit("deltas");
      deltas?.close();
      deltas = new DeltaStreamer(ch, logPath, {
        compress: z,
        from: BigInt(ready.nextSeq),
        coalesce: carried,
        onRecord: (r) => {
          check.digests.markDirty(r.offset, r.length);
          tally.note(r.offset, r.length);
        },
        image: check.image,
        settle: () => ctl.status(),
      });
      const catchUp = new CatchUp(ctl, deltas, check, status.size, watch!, { budgetMs, rttMs, linkBytesPerMs: bulkRate, deadline, initialLevel: bulkThrottled ? BULK_LEVEL : 0, targetMs: bulkMs }, (p) =>
        o.onEvent?.({ event: "progress", phase: "deltas", ...p }),
      );
      const converged = await catchUp.untilConverged(checkInterrupted);
      if (converged.frozen) o.log.warn(converged.frozen);

      // Phase 5 starts before the pause: both tunnel ends up, nothing routed into it yet.
      if (o.redirect && !redirect) {
        emit("redirect");
        redirect = await setUpRedirect(ch, o.redirect, { runDir: o.runDir, name: o.name }, o.log);
      }
      if (hv.kind !== "none") emit("memory");
      const { pausedAt } = await hv.moveMemory(
        async () => {
          checkInterrupted();
          await catchUp.round();
        },
        { onStopped: () => catchUp.vmStopped() },
      );
      await catchUp.stopNoticed();
      if (hv.kind !== "none") o.onEvent?.({ event: "paused", at: Math.round(Date.now() - (performance.now() - pausedAt)) });
      if (hv.pointOfNoReturn === "memory-moved") {
        stage.vmGone = true;
        o.log.info(`point of no return: the VM has left (${hv.kind}); handing its disk over`);
      }

      checkInterrupted();
      emit("handoff");
      stage.fenced = true; // from inside handOffStorage on, the fence may already be up
      tally.markFence();
      const h = await handOffStorage(ch, ctl, deltas, check, o.log, {
        watch: watch!,
        to: o.to ?? "the destination",
        barrierIsPointOfNoReturn: hv.pointOfNoReturn === "fence",
        onBarrier: () => (stage.barrierSent = true),
      });
      // none: the fence was it; QEMU: from the continue request on, it may send the last state at once.
      stage.vmGone = true;
      if (hv.pointOfNoReturn === "complete") o.log.info(`point of no return: the destination verified the disk; letting the VM run there (${hv.kind})`);
      await hv.complete();
      const resumedAt = performance.now();
      if (redirect) await completeRedirect(redirect, o.redirect!, o.log, (e) => o.onEvent?.(e));
      sampler?.stop();
      const end = await ctl.status();
      await ctl.stopRecording({ digest: h.digest, to: o.to });
      deltaStats = addDeltaStats(deltaStats, deltas);
      const metrics = finish(o, {
        t0,
        fencedAt: h.fencedAt,
        doneAt: h.doneAt,
        parts: h.parts,
        pausedAt: hv.kind === "none" ? undefined : pausedAt,
        resumedAt,
        bulk,
        compressors,
        deltas: deltaStats,
        finalDeltas: h.finalDeltas,
        bytesOnWire: wire + ch.bytesSent,
        throttleSteps: Math.max(end.throttle.maxLevel, catchUp.throttleSteps, bulkThrottled ? 1 : 0),
        converged: { estimateMs: converged.estimate.totalMs, budgetMs, frozen: converged.frozen },
        reconnects: attempt,
        disks: tally,
      });
      deltas.close();
      ch.close();
      hv.close();
      return { metrics, redirect };
    } catch (caught) {
      let err = caught;
      if (ch) {
        // A broken write can race the destination's last words: give them a moment to land.
        if (isLinkFailure(err)) await Bun.sleep(50);
        if (peerAborted(ch.failedWith) && !peerAborted(err)) err = ch.failedWith;
        // A failure of ours (not the link's, not theirs): tell the destination, so it stops
        // waiting for a resume and exits, keeping what it has as a base for the next run.
        else if (!isLinkFailure(err) && !ch.errorSent) await ch.send(msg.error(`the source gave up: ${(err as Error).message}`)).catch(() => undefined);
        wire += ch.bytesSent;
        // Last words go out before the stream ends: close() would drop what still waits in
        // our queue behind the bulk (a destination that missed them waits for a resume).
        if (ch.errorSent) await ch.shutdown();
        else ch.close();
      }
      if (deltas) deltaStats = addDeltaStats(deltaStats, deltas);
      deltas?.close();
      deltas = undefined;
      // Before the fence, while memory has not started to move, a broken link is resumed.
      if (!stage.fenced && !stage.vmGone && isLinkFailure(err) && attempt < RESUME_BACKOFF_MS.length && logPath) {
        o.log.warn(`link to the destination broke (${(err as Error).message}); reconnecting in ${RESUME_BACKOFF_MS[attempt]} ms`);
        o.onEvent?.({ event: "reconnect", attempt: attempt + 1 });
        await Bun.sleep(RESUME_BACKOFF_MS[attempt]!);
        continue;
      }
      if (err instanceof HypervisorError && err.unsafe) stage.vmGone = true; // never resume a VM that may run elsewhere
      sampler?.stop();
      // The link broke in the hand-off (the destination may have been killed): settle it
      // with the destination, reconnecting, rather than leave it unfinished. With QEMU
      // before its continue, rolling back alone is safe: that is abortLive's.
      if (stage.fenced && isLinkFailure(err) && !(hv.pointOfNoReturn === "complete" && !stage.vmGone)) {
        const st = await ctl.status().catch(() => undefined);
        if (st?.handoff.state === "unfinished") {
          o.log.warn(`the link broke in the hand-off (${(err as Error).message}); settling it with the destination`);
          try {
            const r = await settleHandoff(ctl, st, recoveryOptions(o, hv, blockSize));
            if (redirect) await completeRedirect(redirect, o.redirect!, o.log, (e) => o.onEvent?.(e));
            const now = performance.now();
            const metrics = finish(o, { t0, fencedAt: now, doneAt: now, bulk, compressors, deltas: deltaStats, finalDeltas: r.finalDeltas, bytesOnWire: wire, throttleSteps: st.throttle.maxLevel, reconnects: attempt + 1 });
            return { metrics, redirect };
          } catch (settled) {
            if (redirect && (settled as PhaseError).exitCode !== ExitCode.unsafeState) await redirect.teardown().catch(() => undefined);
            throw settled;
          } finally {
            hv.close();
          }
        }
      }
      // The VM stays (or comes back) here: its old address must not go into a tunnel.
      if (redirect && !stage.vmGone) await redirect.teardown().catch((e) => o.log.error(`redirect: ${(e as Error).message}`));
      const final = await abortLive(ctl, hv, stage, err, o.log);
      hv.close();
      throw final;
    }
  }
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
async function abortLive(ctl: ControlClient, hv: SourceHypervisor, stage: LiveStage, err: unknown, log: Logger): Promise<Error> {
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

/**
 * The baseline: stop the VM (with a hypervisor: stopped, then its memory copied in one
 * pass), fence its disk, copy all of it, hand over, let the VM run there. The VM stays
 * stopped for the memory and the whole disk: that is the downtime live migration avoids. The
 * point of no return is the BARRIER (QEMU's: its continue): until then the destination
 * cannot release anything, so a failure unfences the source and the VM carries on here.
 */
async function freezeAndCopy(
  ch: Channel,
  ctl: ControlClient,
  status: Pick<ServeStatus, "size" | "disks">,
  blockSize: number,
  o: SourceOptions,
  t0: number,
): Promise<SourceResult> {
  const hv = o.hypervisor ?? new NoSourceHypervisor();
  const stage: LiveStage = { recording: false, fenced: false, barrierSent: false, vmGone: false, phase: "init" };
  let redirect: Redirect | undefined;
  let sampler: { stop(): void } | undefined;
  try {
    // No delta log in this mode: nothing to resume against.
    const shookAt = performance.now();
    const ready = await sourceHandshake(ch, o.creds, { name: o.name, size: status.size, disks: offeredDisks(status), blockSize, recording: "" });
    const rttMs = (performance.now() - shookAt) / 2;
    await hv.prepare();
    if (o.redirect) {
      stage.phase = "redirect";
      phaseEvent(o, "redirect");
      redirect = await setUpRedirect(ch, o.redirect, { runDir: o.runDir, name: o.name }, o.log);
    }
    let pausedAt: number | undefined;
    if (hv.kind !== "none") {
      stage.phase = "memory";
      phaseEvent(o, "memory");
      ({ pausedAt } = await hv.moveMemory(async () => undefined, { stopFirst: true }));
      o.onEvent?.({ event: "paused", at: Math.round(Date.now() - (performance.now() - pausedAt)) });
    }
    stage.fenced = true;
    await ctl.fence({ reason: `freeze-and-copy to ${o.to ?? "the destination"}` });
    const fencedAt = performance.now();
    o.log.info("freeze-and-copy: source fenced; copying the whole image");
    stage.phase = "bulk";
    phaseEvent(o, "bulk");
    sampler = sampleServe(ctl, o.onEvent, wireCount(() => ch)); // the report's throughput
    const digests = new RegionDigests(status.size);
    const images = servedImages(status);
    const z = new Compressor(o.compress, ch, rttMs);
    const bulk = await sendBulk(ch, images, {
      from: bulkResumeOffset(ready.bulkOffset, blockSize),
      blockSize,
      compress: z,
      base: ready.base,
      afterRead: (offset, chunk) => digests.noteData(offset, chunk),
    });
    // Fenced: nothing changed since the read; only regions a resumed copy skipped need reading.
    digests.refresh(images, { all: true });
    const digest = digests.digest();
    stage.phase = "handoff";
    phaseEvent(o, "handoff");
    o.log.info("point of no return: sending the barrier");
    stage.barrierSent = true;
    await ch.send(msg.barrier(0n, status.size, digest));
    const done = await awaitDone(ch);
    if (done.digest !== digest) throw new HandoffError("the destination's image digest differs from the source's", { pastPointOfNoReturn: true });
    const doneAt = performance.now();
    stage.vmGone = true;
    await hv.complete();
    const resumedAt = performance.now();
    if (redirect) await completeRedirect(redirect, o.redirect!, o.log, (e) => o.onEvent?.(e));
    await ctl.stopRecording({ digest, to: o.to });
    const metrics = finish(o, {
      t0,
      fencedAt,
      doneAt,
      pausedAt,
      resumedAt,
      bulk,
      compressors: [z],
      deltas: NO_DELTAS,
      finalDeltas: 0,
      bytesOnWire: ch.bytesSent,
      throttleSteps: 0,
      reconnects: 0,
    });
    hv.close();
    return { metrics, redirect };
  } catch (err) {
    if (err instanceof HypervisorError && err.unsafe) stage.vmGone = true;
    if (redirect && !stage.vmGone) await redirect.teardown().catch((e) => o.log.error(`redirect: ${(e as Error).message}`));
    const final = await abortLive(ctl, hv, stage, err, o.log);
    hv.close();
    throw final;
  } finally {
    sampler?.stop();
    ch.close();
  }
}
