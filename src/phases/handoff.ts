// Phase 4, hand-off (hypervisor "none": storage only).
//
//   source                                   dest
//     drain deltas until the queue is small
//     ---- POINT OF NO RETURN: fence the source serve ----
//     read the log to its end, send the rest
//     BARRIER {lastSeq, size}  ------>  apply, fdatasync, rehash what the last deltas touched
//     rehash likewise; CHECKSUM ------>  compare the image digests
//                                      <-------  DONE {digest}: dest releases held I/O
//
// The digest is kept up to date region by region during the migration (region-digest.ts),
// so the check in the downtime reads only what the last deltas wrote.
//
// Before the fence any failure leaves the source serving and writable (the caller stops
// recording and exits "aborted safely"). After it the source stays fenced: the disk's
// truth is at the destination, or in flight to it, and must not fork.

import type { RegionDigests } from "../disk/region-digest.ts";
import type { ControlClient } from "../disk/control-client.ts";
import { type Channel, PeerAborted, peerAborted } from "../net/channel.ts";
import { type Done, msg, MsgType, typeName } from "../net/protocol.ts";
import type { Logger } from "../log.ts";
import type { DeltaStreamer } from "./deltas.ts";
import { DeltasError, HandoffError } from "./errors.ts";

/** Switch over once less than this much is unsent or unapplied: it bounds the storage part of downtime. */
const SWITCHOVER_PENDING_BYTES = 1024 * 1024;
const DRAIN_ACKS_MAX_MS = 2000;
const CATCH_UP_TIMEOUT_MS = 10 * 60 * 1000;

export interface HandoffTimes {
  fencedAt: number;
  doneAt: number;
  finalDeltas: number;
}

/** The source image and its region digests, kept current as deltas are read. */
export interface ImageCheck {
  image: string;
  digests: RegionDigests;
}

/**
 * Waits (bounded) for the destination to acknowledge everything sent, sending nothing new:
 * the fence then finds it idle, and the barrier's sync has only the last deltas to write.
 */
async function drainAcks(deltas: DeltaStreamer): Promise<void> {
  const end = Date.now() + DRAIN_ACKS_MAX_MS;
  while (deltas.unackedBytes() > 0 && Date.now() < end) {
    await Bun.sleep(2);
    deltas.takeAcks();
  }
}

/** What the deltas phase reports while it runs (the progress line, --json). */
export interface DeltasProgress {
  queuedBytes: number;
  unackedBytes: number;
  deltasSent: number;
  deltasSkipped: number;
  throttleLevel: number;
}

const PROGRESS_EVERY_MS = 250;

export async function catchUp(
  ctl: ControlClient,
  deltas: DeltaStreamer,
  check: ImageCheck,
  size: number,
  onProgress?: (p: DeltasProgress) => void,
): Promise<void> {
  const start = Date.now();
  let reported = -1n;
  let throttleLevel = 0;
  let lastProgress = 0;
  for (let round = 0; ; round++) {
    await deltas.pump();
    deltas.takeAcks();
    // The serve's throttle watches the queue: tell it how far we got.
    if (deltas.lastRead !== reported) {
      throttleLevel = (await ctl.shipped(deltas.lastRead)).level;
      reported = deltas.lastRead;
    }
    if (onProgress && Date.now() - lastProgress >= PROGRESS_EVERY_MS) {
      lastProgress = Date.now();
      onProgress({ queuedBytes: deltas.pendingBytes(), unackedBytes: deltas.unackedBytes(), deltasSent: deltas.sent, deltasSkipped: deltas.skipped, throttleLevel });
    }
    // Rehash what the deltas so far touched now, while the VM runs, not in the downtime
    // (the first round also hashes regions no bulk chunk covered whole: a resumed copy).
    check.digests.refresh(check.image, { all: true });
    // Switch over only when little is left unsent here and the destination has caught up
    // with what was sent: a backlog there (unapplied, unsynced) would be downtime.
    if (deltas.ackedBulk >= size && deltas.pendingBytes() + deltas.unackedBytes() < SWITCHOVER_PENDING_BYTES) {
      await drainAcks(deltas);
      return;
    }
    if (round % 20 === 0) {
      const st = await ctl.status();
      if (st.recording.failed) throw new DeltasError(`record mode failed at the source: ${st.recording.failed}`);
    }
    if (Date.now() - start > CATCH_UP_TIMEOUT_MS)
      throw new DeltasError("the VM writes faster than the link carries deltas", { cause: new Error(`${deltas.pendingBytes()} bytes still queued after ${CATCH_UP_TIMEOUT_MS / 60000} min`) });
    await Bun.sleep(10);
  }
}

/** Waits for DONE; ACKs that were in flight (the destination sends them periodically) are skipped. */
export async function awaitDone(ch: Channel): Promise<Done> {
  for (;;) {
    const m = await ch.recv(10 * 60 * 1000);
    if (m.type === MsgType.DONE) return m;
    if (m.type === MsgType.ACK) continue;
    if (m.type === MsgType.ERROR) throw new PeerAborted(m.message);
    throw new HandoffError(`expected DONE, got ${typeName(m.type)}`, { pastPointOfNoReturn: true });
  }
}

export async function handOffStorage(
  ch: Channel,
  ctl: ControlClient,
  deltas: DeltaStreamer,
  check: ImageCheck,
  log: Logger,
): Promise<HandoffTimes> {
  const st = await ctl.status();
  if (st.recording.failed) throw new HandoffError(`record mode failed at the source: ${st.recording.failed}`);

  // ---- POINT OF NO RETURN -------------------------------------------------------------
  // Downtime is counted from before the request: the fence may apply before we hear back.
  const fencedAt = performance.now();
  await ctl.fence();
  log.info("point of no return: source fenced; every later write there is refused");

  try {
    const before = deltas.sent;
    await deltas.pump({ final: true, pastPointOfNoReturn: true });
    const pumpedAt = performance.now();
    const after = await ctl.status();
    if (after.recording.failed) throw new HandoffError(`record mode failed at the source: ${after.recording.failed}`, { pastPointOfNoReturn: true });
    // The barrier goes first, without the digest, so the destination rehashes its regions
    // while we rehash ours: the verification costs one hash time of downtime, not two.
    await ch.send(msg.barrier(deltas.lastSeq, after.size, ""));
    check.digests.refresh(check.image, { all: true });
    const digest = check.digests.digest();
    await ch.send(msg.checksum(digest));
    const hashedAt = performance.now();
    const done = await awaitDone(ch);
    if (done.digest !== digest) throw new HandoffError("the destination's image digest differs from the source's", { pastPointOfNoReturn: true });
    const doneAt = performance.now();
    const ms = (a: number, b: number) => `${Math.round(b - a)} ms`;
    log.info(
      `hand-off: fence and last ${deltas.sent - before} deltas ${ms(fencedAt, pumpedAt)}, digest here ${ms(pumpedAt, hashedAt)}, ` +
        `until the destination verified ${ms(hashedAt, doneAt)}`,
    );
    return { fencedAt, doneAt, finalDeltas: deltas.sent - before };
  } catch (cause) {
    // The destination said it gives up: it will never release its copy, so the disk's
    // truth is still here alone, and the source can serve it again.
    const aborted = peerAborted(cause);
    if (aborted) {
      await ctl.fence(false);
      log.warn("the destination aborted the hand-off; source unfenced: the VM's disk is served here again, writable");
      throw new HandoffError(`the destination aborted: ${aborted.reason}`, { cause, hint: "the migration did not happen; fix the cause and run it again" });
    }
    if (cause instanceof HandoffError || cause instanceof DeltasError) throw cause;
    throw new HandoffError("failed after the point of no return", {
      cause,
      pastPointOfNoReturn: true,
      hint: "the source stays fenced; check the destination: if it reports the image complete, start the VM there, else re-run the migration",
    });
  }
}
