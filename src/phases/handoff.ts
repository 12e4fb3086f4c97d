// Phase 4, hand-off (hypervisor "none": storage only).
//
//   source                                   dest
//     drain deltas until the queue is small
//     ---- POINT OF NO RETURN: fence the source serve ----
//     read the log to its end, send the rest
//     BARRIER {lastSeq, size}  ------>  apply, fdatasync, hash the image
//     hash the image; CHECKSUM -------->  compare
//                                      <-------  DONE {sha256}: dest releases held I/O
//
// Before the fence any failure leaves the source serving and writable (the caller stops
// recording and exits "aborted safely"). After it the source stays fenced: the disk's
// truth is at the destination, or in flight to it, and must not fork.

import { imageSha256 } from "../disk/checksum.ts";
import type { ControlClient } from "../disk/control-client.ts";
import type { Channel } from "../net/channel.ts";
import { type Done, msg, MsgType, typeName } from "../net/protocol.ts";
import type { Logger } from "../log.ts";
import type { DeltaStreamer } from "./deltas.ts";
import { DeltasError, HandoffError } from "./errors.ts";

/** Switch over once less than this much log is unsent: it bounds the storage part of downtime. */
const SWITCHOVER_PENDING_BYTES = 1024 * 1024;
const CATCH_UP_TIMEOUT_MS = 10 * 60 * 1000;

export interface HandoffTimes {
  fencedAt: number;
  doneAt: number;
  finalDeltas: number;
}

export async function catchUp(ctl: ControlClient, deltas: DeltaStreamer): Promise<void> {
  const start = Date.now();
  for (let round = 0; ; round++) {
    await deltas.pump();
    if (deltas.pendingBytes() < SWITCHOVER_PENDING_BYTES) return;
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
    if (m.type === MsgType.ERROR) throw new HandoffError(`the destination reported: ${m.message}`, { pastPointOfNoReturn: true });
    throw new HandoffError(`expected DONE, got ${typeName(m.type)}`, { pastPointOfNoReturn: true });
  }
}

export async function handOffStorage(
  ch: Channel,
  ctl: ControlClient,
  deltas: DeltaStreamer,
  imagePath: string,
  log: Logger,
): Promise<HandoffTimes> {
  const st = await ctl.status();
  if (st.recording.failed) throw new HandoffError(`record mode failed at the source: ${st.recording.failed}`);

  // ---- POINT OF NO RETURN -------------------------------------------------------------
  await ctl.fence();
  const fencedAt = performance.now();
  log.info("point of no return: source fenced; every later write there is refused");

  try {
    const before = deltas.sent;
    await deltas.pump({ final: true, pastPointOfNoReturn: true });
    const after = await ctl.status();
    if (after.recording.failed) throw new HandoffError(`record mode failed at the source: ${after.recording.failed}`, { pastPointOfNoReturn: true });
    // The barrier goes first, without the checksum, so the destination hashes its image
    // while we hash ours: the verification costs one hash time of downtime, not two.
    await ch.send(msg.barrier(deltas.lastSeq, after.size, ""));
    const sha = imageSha256(imagePath);
    await ch.send(msg.checksum(sha));
    const done = await awaitDone(ch);
    if (done.sha256 !== sha) throw new HandoffError("the destination's image checksum differs from the source's", { pastPointOfNoReturn: true });
    return { fencedAt, doneAt: performance.now(), finalDeltas: deltas.sent - before };
  } catch (cause) {
    if (cause instanceof HandoffError || cause instanceof DeltasError) throw cause;
    throw new HandoffError("failed after the point of no return", {
      cause,
      pastPointOfNoReturn: true,
      hint: "the source stays fenced; check the destination: if it reports the image complete, start the VM there, else re-run the migration",
    });
  }
}
