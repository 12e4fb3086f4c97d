// `serve` as a library: a VM's images (one, or several as one space: image-set.ts), their
// decorator stack, the NBD listener with an export per disk, the control API.
// `dest` reuses it as the VM's server on the new host once the image is consistent.
//
// The stack, outermost first, and why in this order:
//   Throttling  delays writes; must see every write, and must delay before the fence check
//   Fencing     checked when a write is applied, so a throttled write cannot slip past it
//   Recording   appends to the delta log in the same turn as the image write (log first)
//   Tracking    counts and maps every write applied, to check the log against (write-tracking.ts)
//   File        the image
//
// Before it answers anything, a service locks its image (image-lock.ts: QEMU's scheme, so
// no second writer opens it) and reads the image's durable state (image-state.ts): a fence
// that some earlier process set holds from the first request on, and a recording a killed
// serve left goes on in the same log before the first write is taken.

import { processAlive } from "../../util/process.ts";
import { chmodSync, mkdirSync } from "node:fs";
import { fileProblem } from "../../util/os-errors.ts";
import { join } from "node:path";
import { ServeError } from "../../errors.ts";
import type { Logger } from "../../log.ts";
import { FencingBackend } from "../block/fencing.ts";
import { describeImages, type DiskPlace, type ImageFile, imageSizes, openImage, placeDisks } from "../image/image-set.ts";
import { ExportWindow } from "../image/export-window.ts";
import { newStats, type NbdStats } from "../nbd/nbd-connection.ts";
import { claimUnixPath, type Endpoint, formatEndpoint, NbdServer } from "../nbd/nbd-server.ts";
import { RecordingBackend, type RecordingState } from "../recording/recording.ts";
import { ThrottlingBackend } from "../throttle/throttle.ts";
import { DIRTY_PIECE, TrackingBackend } from "../recording/write-tracking.ts";
import { logBound } from "../recording/log-bound.ts";
import { type ImageLock, ImageLockError, lockImage } from "../image/image-lock.ts";
import { bootId, type ImageState, ImageStateFile } from "../image/image-state.ts";
import { basename, dirname } from "node:path";
import { DoublingThrottlePolicy, type ThrottleParams, type ThrottleState } from "../throttle/throttle-policy.ts";
import { startControlApi, type ControlApi, type ControlledServe } from "./control-api.ts";
import { controlSocketPath, defaultNbdEndpoint, type HandoffState, type IncomingMigration, type RecordingStart, type ServeMode, type ServeStatus, vmState } from "./status.ts";

export interface DiskServiceOptions {
  /** The VM's images, in disk order. */
  images: readonly string[];
  name: string;
  runDir: string;
  nbd?: Endpoint;
  readOnly?: boolean;
  throttle?: Partial<ThrottleParams>;
  /** Hold every NBD request until this resolves (the destination, until consistent). */
  hold?: Promise<void>;
  /** While holding, answer reads (a QEMU destination probes its disk at start-up; nbd-server.ts). */
  holdWritesOnly?: boolean;
  /** The operator lifts a fence that an earlier process set (`serve --unfence`). */
  unfence?: boolean;
  /** The image's state file, when the caller (dest) shares it; else the service opens it. */
  state?: ImageStateFile;
  /**
   * How the process that owns this service stops when asked to retire (its disk moved away
   * for good; see retire()). Without it, retiring is refused.
   */
  onRetire?: () => void;
  /**
   * The largest request advertised to NBD clients (serve --max-request). It bounds what a
   * client can hold in flight, and so what the VM's pause drains (QEMU keeps 16 requests
   * in flight, each up to this): those bytes cross the link inside the downtime.
   */
  maxRequest?: number;
  log: Logger;
}

/** A recording action for another recording than the one this serve holds (or for one when it holds none). */
function otherRecording(held: string | undefined, asked: string | undefined, more = ""): ServeError {
  return new ServeError(`the serve records ${held ? `recording ${held}` : "nothing"}, not ${asked ?? "any"}${more}`);
}

export class DiskService implements ControlledServe {
  readonly file: ImageFile;
  readonly disks: DiskPlace[];
  private readonly exportStats: NbdStats[];
  readonly recording: RecordingBackend;
  readonly tracking: TrackingBackend;
  readonly state: ImageStateFile | undefined;
  readonly instance = crypto.randomUUID();
  private locks: ImageLock[] = [];
  readonly fencing: FencingBackend;
  readonly throttling: ThrottlingBackend;
  readonly nbd: NbdServer;
  readonly nbdEndpoint: Endpoint;
  readonly controlPath: string;
  private control?: ControlApi;
  private recordingOwner?: number;
  /** Set by dest: the receiver's progress, for `wanmig status` while the image arrives. */
  incoming?: () => IncomingMigration;
  private readonly startedAt = new Date();

  private constructor(readonly opts: DiskServiceOptions) {
    try {
      this.file = openImage(opts.images, opts.readOnly ?? false);
    } catch (cause) {
      throw new ServeError(`cannot open image ${describeImages(opts.images)}: ${fileProblem(cause)}`, { hint: "the image must be an existing regular file (create one with truncate -s SIZE)" });
    }
    this.tracking = new TrackingBackend(this.file);
    this.recording = new RecordingBackend(this.tracking, (msg) => opts.log.error(`record mode failed: ${msg}; a migration under way must abort`), this.tracking);
    this.state = this.file.readOnly ? undefined : (opts.state ?? new ImageStateFile(opts.images));
    this.fencing = new FencingBackend(this.recording);
    this.throttling = new ThrottlingBackend(this.fencing, new DoublingThrottlePolicy(opts.throttle));
    this.nbdEndpoint = opts.nbd ?? defaultNbdEndpoint(opts.runDir, opts.name);
    this.controlPath = controlSocketPath(opts.runDir, opts.name);
    this.disks = placeDisks(opts.images, imageSizes(opts.images));
    this.exportStats = this.disks.map(() => newStats());
    const exports = this.disks.map((d) => ({
      name: `disk${d.index}`,
      description: `wanmig ${opts.name} disk${d.index} (${d.image})`,
      backend: this.disks.length === 1 ? this.throttling : new ExportWindow(this.throttling, d.offset, d.size),
      stats: this.exportStats[d.index]!,
    }));
    this.nbd = new NbdServer(exports, [opts.name], opts.log, opts.maxRequest);
  }

  static async start(opts: DiskServiceOptions): Promise<DiskService> {
    try {
      mkdirSync(opts.runDir, { recursive: true, mode: 0o755 });
    } catch (cause) {
      throw new ServeError(`cannot create the run directory ${opts.runDir}: ${fileProblem(cause)}`, { hint: "pass --run-dir DIR with a directory you can write" });
    }
    // The name first (the clearer message when it is served already), then the image.
    await claimUnixPath(controlSocketPath(opts.runDir, opts.name), "control socket");
    if (!opts.images.length) throw new ServeError("no image to serve");
    if (new Set(opts.images).size !== opts.images.length) throw new ServeError("an image is given twice", { hint: "--image once per disk, each a different file" });
    const locks: ImageLock[] = [];
    let svc: DiskService;
    try {
      for (const image of opts.images) {
        try {
          locks.push(lockImage(image, { readOnly: opts.readOnly }));
        } catch (cause) {
          if (cause instanceof ImageLockError)
            throw new ServeError(`${image} is in use by another process`, { cause, hint: "only one process may serve an image: see `wanmig status`, or the QEMU that has it open" });
          throw new ServeError(`cannot open image ${image}: ${fileProblem(cause)}`, { hint: "the image must be an existing regular file (create one with truncate -s SIZE)" });
        }
      }
      svc = new DiskService(opts);
    } catch (err) {
      for (const l of locks) l.release();
      throw err;
    }
    svc.locks = locks;
    try {
      svc.restoreState(); // before any request: a fence holds from the first one
      svc.control = await startControlApi(svc.controlPath, svc);
      chmodSync(svc.controlPath, 0o600); // the control socket can fence the disk
      if (opts.hold) svc.nbd.hold(opts.hold, { reads: !opts.holdWritesOnly });
      await svc.nbd.listen(svc.nbdEndpoint);
    } catch (err) {
      svc.stop();
      throw err;
    }
    opts.log.info(
      `serving ${describeImages(opts.images)} (${svc.disks.map((d) => d.size).join(" + ")} bytes${svc.file.readOnly ? ", read-only" : ""}) as ${JSON.stringify(opts.name)}${svc.disks.length > 1 ? ` (exports ${svc.disks.map((d) => `disk${d.index}`).join(", ")})` : ""} on ${formatEndpoint(svc.nbdEndpoint)}; control ${svc.controlPath}`,
    );
    return svc;
  }

  /** What an earlier process of this image left: its fence, and a recording to go on with. */
  private restoreState(): void {
    const st = this.state?.state;
    if (!st) return;
    const log = this.opts.log;
    if (st.fence) {
      if (this.opts.unfence) {
        this.unfence(`the operator passed --unfence (it was fenced since ${st.fence.since}: ${st.fence.reason})`, { force: true });
      } else {
        this.fencing.fence();
        log.warn(`fenced since ${st.fence.since}: ${st.fence.reason}; every write is refused`);
      }
    } else if (this.opts.unfence) log.info("--unfence: the image was not fenced");
    const rec = st.recording;
    if (!rec) return;
    if (rec.bootId !== bootId()) {
      // The log's tail may not have reached the disk before the reboot (it is not synced
      // per write, and /run is a tmpfs): going on with it could miss writes. Drop it; a
      // source that still runs sees another recording and aborts before its point of no return.
      log.warn(`the recording ${rec.id} did not survive the reboot; a migration under way must start again`);
      this.state!.update((s) => delete s.recording);
      return;
    }
    let r: ReturnType<RecordingBackend["resume"]>;
    try {
      r = this.recording.resume(rec.log);
    } catch (cause) {
      // The disk must be served all the same. Without its log the recording is over: a
      // source still running sees no recording and aborts before its point of no return.
      log.error(`cannot go on with the recording ${rec.id} (${(cause as Error).message}${(cause as Error).cause ? `: ${((cause as Error).cause as Error).message}` : ""}); it is dropped, and a migration under way must start again`);
      this.state!.update((s) => delete s.recording);
      return;
    }
    this.tracking.start(r.records);
    this.recording.maxBytes = rec.maxLogBytes;
    this.recordingOwner = rec.owner;
    this.throttling.counting = true;
    this.state!.update((s) => (s.recording = { ...rec, restarts: (rec.restarts ?? 0) + 1 }));
    log.warn(
      `record mode goes on after a restart: ${r.path}, next sequence ${r.nextSeq}` +
        (r.rewrote ? ` (its last record, ${r.rewrote.length} bytes at ${r.rewrote.offset}, written to the image again)` : ""),
    );
  }

  get mode(): ServeMode {
    if (this.fencing.fenced) return "fenced";
    return this.recording.active ? "recording" : "normal";
  }

  /**
   * Starts record mode for the `source` process `owner`. A recording whose source is
   * still alive belongs to that migration: a second source would share its log and could
   * hand the disk to a second host, so it is refused. A dead owner's log is adopted.
   */
  startRecording({ dir, owner, maxLogBytes, rateCap, bulkCursor, ranges }: RecordingStart = {}): RecordingState & { owner?: number } {
    if (this.file.readOnly) throw new ServeError("a read-only export has no writes to record");
    const wasActive = this.recording.active;
    if (wasActive && this.recordingOwner !== undefined && owner !== this.recordingOwner && processAlive(this.recordingOwner))
      throw new ServeError(`a migration of ${this.opts.name} is already under way (source pid ${this.recordingOwner})`, {
        hint: "wait for it, or stop it; only one migration of a disk at a time",
      });
    if (!wasActive && this.fencing.fenced) throw new ServeError("the image is fenced: there is nothing to migrate from here");
    this.recordingOwner = owner;
    const st = this.recording.start(dir ?? this.opts.runDir, this.opts.name, bulkCursor, ranges);
    this.throttling.lifted = false; // a source starting (or resuming) its migration: the VM runs
    if (!wasActive) {
      this.tracking.start();
      const bound = logBound({ logDir: dirname(st.path!), images: this.opts.images, requested: maxLogBytes });
      this.recording.maxBytes = bound.bytes;
      try {
        // Durable before the first bulk byte is read: a serve started after a kill must go on recording.
        this.state!.update((s) => (s.recording = { id: basename(st.path!), log: st.path!, owner, startedAt: new Date().toISOString(), bootId: bootId(), maxLogBytes: bound.bytes }));
      } catch (cause) {
        this.recording.stop();
        this.tracking.stop();
        throw new ServeError(`cannot record the recording in ${this.state!.path}`, { cause });
      }
      this.throttling.policy.reset();
      this.throttling.counting = true;
      // In the same turn as the log opens: no write gets in between uncapped.
      if (rateCap) this.throttling.cap.set(rateCap);
      this.opts.log.info(`record mode on: delta log ${st.path}, first sequence ${st.firstSeq}, at most ${bound.bytes} bytes (${bound.why})`);
    } else if (owner !== undefined && this.state?.state.recording) this.state.update((s) => (s.recording!.owner = owner));
    return { ...this.recordingStatus(), owner };
  }

  /**
   * Ends record mode. `outcome` "moved": the hand-off completed and the disk stays fenced
   * for good (durably, before this returns); anything else: the migration is over without
   * moving the disk.
   */
  stopRecording(outcome?: { moved?: { digest?: string; to?: string } }): RecordingState {
    const id = this.state?.state.recording?.id;
    if (outcome?.moved && !this.fencing.fenced) throw new ServeError("a hand-off cannot complete on a disk that is not fenced");
    this.state?.update((s) => {
      delete s.recording;
      if (outcome?.moved) {
        const what = id ?? s.fence?.recording ?? "a freeze-and-copy migration";
        s.moved = { recording: what, at: new Date().toISOString(), digest: outcome.moved.digest, to: outcome.moved.to };
        // An incoming migration that brought the VM here is over too: the VM left again, and
        // this image is now only a base for its next return (image-state.ts).
        delete s.incoming;
        s.fence = { ...s.fence!, reason: `the VM's disk moved${outcome.moved.to ? ` to ${outcome.moved.to}` : ""} (hand-off of ${what} completed)` };
      }
    });
    this.recordingOwner = undefined;
    const st = this.recording.stop();
    this.tracking.stop();
    this.throttling.counting = false;
    this.throttling.lifted = false;
    this.throttling.policy.reset();
    this.throttling.cap.clear();
    this.throttling.release();
    this.opts.log.info(`record mode off after ${st.records} deltas${outcome?.moved ? "; the disk has moved away and stays fenced" : ""}`);
    return st;
  }

  private recordingStatus(): ServeStatus["recording"] {
    const marker = this.state?.state.recording;
    return { ...this.recording.state(), owner: this.recordingOwner, id: marker?.id, applied: this.tracking.applied, restarts: marker?.restarts };
  }

  /** Raises the bulk copy's cursor of `recording` (recording.ts); refused for any other recording. */
  raiseCursor(recording: string, offset: number): RecordingState {
    const id = this.state?.state.recording?.id;
    if (recording !== id) throw otherRecording(id, recording);
    return this.recording.raiseCursor(offset);
  }

  /**
   * The source takes what was written since it last asked (the dirty map), checked
   * against the recording it started: a serve that lost or replaced that recording
   * must not be read as if it had it.
   */
  takeDirty(recording?: string): { recording?: string; instance: string; pieceSize: number; runs: [number, number][] } {
    const id = this.state?.state.recording?.id;
    if (recording !== undefined && recording !== id) throw otherRecording(id, recording, ": writes may have escaped the log");
    return { recording: id, instance: this.instance, pieceSize: DIRTY_PIECE, runs: this.tracking.takeDirty() };
  }

  /** The source has shipped (or skipped) every delta up to `seq`: the throttle's queue shrinks. */
  noteShipped(seq: bigint, rateCap = 0): ThrottleState & { rateCapBytesPerSec?: number; log: { bytes: number; shipBytes: number; maxBytes?: number }; held: { writes: number; bytes: number } } {
    const first = this.recording.state().firstSeq;
    if (first !== undefined && seq >= BigInt(first)) this.throttling.policy.noteShipped(Number(seq - BigInt(first) + 1n));
    this.throttling.cap.set(rateCap);
    const rec = this.recording.state();
    const held = { writes: this.throttling.queueLength, bytes: this.throttling.heldBytes };
    return { ...this.throttling.policy.state(), rateCapBytesPerSec: this.throttling.cap.current(), log: { bytes: rec.bytes, shipBytes: rec.shipBytes, maxBytes: rec.maxBytes }, held };
  }

    /**
   * The migrating source saw its VM stop: its writes still in flight are let through
   * unheld (throttle.ts lift()) until recording starts again or ends. Refused for another
   * recording than the caller's, as every recording action is.
   */
  vmStopped(recording?: string): ThrottleState & { rateCapBytesPerSec?: number } {
    const id = this.state?.state.recording?.id;
    if (!this.recording.active || (recording !== undefined && recording !== id)) throw otherRecording(id, recording);
    if (!this.throttling.lifted) {
      this.throttling.cap.clear();
      this.throttling.lift();
      this.opts.log.info(`the VM stopped at the source: its last writes (${this.throttling.queueLength} held now) go through unthrottled`);
    }
    return { ...this.throttling.policy.state(), rateCapBytesPerSec: this.throttling.cap.current() };
  }

  configureThrottle(params: Partial<ThrottleParams>): ThrottleState {
    this.throttling.policy.configure(params);
    return this.throttling.policy.state();
  }

  /**
   * Fences now (in memory first, so no write gets past while the marker is written), then
   * makes it durable; returns only once a restart would come up fenced. `recording`: the
   * migration's hand-off, which must be the recording this serve holds.
   */
  fence(opts: { recording?: string; reason?: string } = {}): void {
    const id = this.state?.state.recording?.id;
    if (opts.recording !== undefined && opts.recording !== id)
      throw otherRecording(id, opts.recording, ": writes may have escaped the log; not fencing");
    const was = this.fencing.fenced;
    this.fencing.fence();
    this.throttling.release(); // held writes meet the fence now, not after their delays
    const reason = opts.reason ?? (opts.recording ? `hand-off of ${opts.recording}` : "fenced by a control request");
    if (!this.state?.state.fence) this.state?.update((s) => (s.fence = { since: new Date().toISOString(), reason, recording: opts.recording }));
    if (!was) this.opts.log.info(`fenced (${reason}): every later write is refused with EPERM`);
  }

  /**
   * Lifts the fence, durably. Through the control API only while a migration's hand-off is
   * unfinished (the source rolls back before its point of no return); once the disk has
   * moved, only the operator can (`serve --unfence`: `force`).
   */
  unfence(reason: string, opts: { force?: boolean } = {}): void {
    const st = this.state?.state;
    if (!opts.force && st?.fence && st.moved)
      throw new ServeError(`the disk is fenced for good (${st.fence.reason}); refusing to unfence it`, {
        hint: "only an operator who knows the VM runs nowhere else may: wanmig serve ... --unfence",
      });
    if (st?.fence || st?.moved)
      this.state!.update((s) => {
        delete s.fence;
        if (opts.force) delete s.moved;
      });
    if (this.fencing.fenced || st?.fence) this.opts.log.warn(`unfenced: writes accepted again (${reason})`);
    this.fencing.unfence();
  }

  /**
   * Stops this server for a new incoming migration of the same VM onto its images (the VM
   * moving back here, `wanmig dest`). Only once the disk has moved away for good (fenced,
   * `moved`): a server whose disk may still be the VM's live disk is never stopped this way.
   * The stop itself runs after the answer has gone out.
   */
  retire(): { images: string[]; moved: string } {
    const st = this.state?.state;
    if (!st?.fence || !st.moved || this.recording.active)
      throw new ServeError(`${this.opts.name}'s disk has not moved away (${this.handoff().text}); refusing to stop its server`, {
        hint: "only a server left fenced by a completed migration away is stopped for the VM's return",
      });
    if (!this.opts.onRetire) throw new ServeError(`this server of ${this.opts.name} cannot be stopped over its control socket`);
    this.opts.log.info(`asked to stop: ${this.opts.name}'s disk moved away (${st.moved.recording}) and a new migration of it comes in here`);
    setTimeout(this.opts.onRetire, 20);
    return { images: this.disks.map((d) => d.image), moved: st.moved.recording };
  }

  /** Where this image stands in a hand-off (status). */
  handoff(): ServeStatus["handoff"] {
    const st: Readonly<ImageState> = this.state?.state ?? { version: 1 };
    const m = this.incoming?.();
    if (m && m.state !== "completed")
      return { state: "receiving", recording: st.incoming?.recording, text: m.state === "waiting" && st.incoming ? "receiving: waiting for the source to resume" : `receiving (${m.state})` };
    if (st.fence && st.moved) return { state: "moved", recording: st.moved.recording, to: st.moved.to, since: st.fence.since, reason: st.fence.reason, text: `fenced: ${st.fence.reason}` };
    if (st.fence && (st.recording || st.fence.recording))
      return { state: "unfinished", recording: st.recording?.id ?? st.fence.recording, since: st.fence.since, reason: st.fence.reason, text: "fenced, hand-off unfinished: run the migration again to finish or roll it back" };
    if (st.fence) return { state: "fenced", since: st.fence.since, reason: st.fence.reason, text: `fenced: ${st.fence.reason}` };
    if (st.incoming?.state === "verified") return { state: "verified", recording: st.incoming.recording, since: st.incoming.at, text: "verified, serving" };
    return { state: "none", text: "serving" };
  }

  status(): ServeStatus {
    const handoff = this.handoff();
    return {
      name: this.opts.name,
      pid: process.pid,
      image: describeImages(this.opts.images),
      size: this.file.size,
      disks: this.disks.map((d) => ({ ...d, export: `disk${d.index}`, io: { ...this.exportStats[d.index]! } })),
      readOnly: this.file.readOnly,
      nbd: formatEndpoint(this.nbdEndpoint),
      control: this.controlPath,
      startedAt: this.startedAt.toISOString(),
      mode: this.mode,
      clients: this.nbd.clients,
      maxRequest: this.nbd.maxRequest,
      connectionsTotal: this.nbd.totalConnections,
      io: { ...this.nbd.stats },
      instance: this.instance,
      recording: this.recordingStatus(),
      handoff,
      state: vmState(this.mode, handoff.state),
      throttle: {
        ...this.throttling.policy.state(),
        rateCapBytesPerSec: this.throttling.cap.current(),
        queueLength: this.throttling.queueLength,
        heldBytes: this.throttling.heldBytes,
        delayedWrites: this.throttling.delayedWrites,
        totalDelayMs: Math.round(this.throttling.totalDelayMs),
        vmStopped: this.throttling.lifted,
        pauseDrain: { ...this.throttling.pauseDrain },
      },
      fence: { fenced: this.fencing.fenced, refusedWrites: this.fencing.refused, since: this.state?.state.fence?.since, reason: this.state?.state.fence?.reason },
      migration: this.incoming?.(),
    };
  }

  /** A clean stop keeps the recording marker: a serve started again goes on recording. */
  stop(): void {
    this.nbd.stop();
    this.control?.stop();
    this.recording.stop();
    this.file.close();
    for (const l of this.locks) l.release();
  }
}
