// Taking up a hand-off that a killed source (or a broken link, or a killed destination)
// left unfinished: the source's disk is fenced, the VM is paused or gone, and only the
// two ends together can say which way it goes. The source connects again, naming the
// same recording, and the destination's READY tells where it stands:
//
//   READY.verified = D      the destination verified and released its copy: check D against
//                           this image (fenced, so it cannot change), record the move
//   whole bulk, same log    finish the hand-off: the deltas from READY's position (the log
//   (or the VM has gone)    is sealed by the fence), BARRIER, CHECKSUM, DONE
//   anything else           roll back: ROLLBACK, and only once the destination answers
//                           ROLLED_BACK (it never releases this recording, durably) is
//                           the fence lifted and the VM let run here again
//
// A destination that cannot be reached decides nothing: the fence stays, and the operator
// runs the migration again once it can be.

import type { ControlClient } from "../disk/service/control-client.ts";
import { offeredDisks, type ServeStatus, servedImages } from "../disk/service/status.ts";
import { imageDigest, RegionDigests } from "../disk/image/region-digest.ts";
import type { SourceHypervisor, RecoveryState } from "../hypervisor/types.ts";
import type { Logger } from "../log.ts";
import { type Channel, peerAborted } from "../net/channel.ts";
import { type CompressSetting, Compressor } from "../net/compress.ts";
import { msg, MsgType, type Ready } from "../net/protocol.ts";
import { sendBulk } from "./bulk.ts";
import { bulkResumeOffset } from "./base-hashes.ts";
import { DeltaStreamer } from "./deltas.ts";
import { HandoffError, PhaseError } from "./errors.ts";
import { awaitDone } from "./handoff.ts";
import { type Credentials, sourceHandshake } from "./init.ts";

export interface RecoveryOptions {
  name: string;
  connect: () => Promise<Channel>;
  creds: Credentials;
  compress: CompressSetting;
  blockSize: number;
  hypervisor: SourceHypervisor;
  log: Logger;
  /** Where the destination is, for the record of the move. */
  to: string;
  /** Pauses between attempts to reach the destination (ms). */
  backoffMs: number[];
}

export interface RecoveryResult {
  outcome: "completed" | "confirmed";
  finalDeltas: number;
  bytesOnWire: number;
  digest: string;
}

/** The rolled-back end of a recovery: exit 5, the VM's disk writable here again. */
export class RolledBack extends PhaseError {
  constructor(reason: string) {
    super("hand-off", `rolled back (${reason}); the VM's disk is served here again, writable`);
  }
}

async function connectWithBackoff(o: RecoveryOptions, recording: string, status: Pick<ServeStatus, "size" | "disks">): Promise<{ ch: Channel; ready: Ready }> {
  let last: unknown;
  for (let attempt = 0; attempt <= o.backoffMs.length; attempt++) {
    try {
      const ch = await o.connect();
      try {
        return { ch, ready: await sourceHandshake(ch, o.creds, { name: o.name, size: status.size, disks: offeredDisks(status), blockSize: o.blockSize, recording }) };
      } catch (err) {
        ch.close();
        throw err;
      }
    } catch (err) {
      last = err;
      if (peerAborted(err)) break; // the destination answered, with a refusal: asking again changes nothing
      if (attempt < o.backoffMs.length) {
        o.log.warn(`cannot reach the destination to settle the hand-off (${(err as Error).message}); again in ${o.backoffMs[attempt]} ms`);
        await Bun.sleep(o.backoffMs[attempt]!);
      }
    }
  }
  const refused = peerAborted(last);
  throw new HandoffError(refused ? `the destination refused to settle the hand-off: ${refused.reason}` : "cannot reach the destination to finish or roll back the hand-off", {
    cause: last,
    pastPointOfNoReturn: true,
    hint: "the source stays fenced (the VM may run nowhere yet); run the same `wanmig source` again once the destination is reachable, or, if it is gone for good and never ran the VM, `wanmig serve ... --unfence`",
  });
}

/**
 * Finishes the unfinished hand-off of `status`'s serve, or rolls it back. `logPath`: the
 * recording's log, if it survived (a reboot drops it: then only a roll-back is possible,
 * unless the destination already verified).
 */
export async function settleHandoff(ctl: ControlClient, status: ServeStatus, o: RecoveryOptions): Promise<RecoveryResult> {
  const recording = status.handoff.recording!;
  const logPath = status.recording.active && status.recording.id === recording ? status.recording.path : undefined;
  const vm: RecoveryState = await o.hypervisor.recoverState();
  o.log.warn(`the hand-off of ${recording} was left unfinished (fenced since ${status.handoff.since}); the VM ${vm === "must-complete" ? "has left" : vm === "runs-here" ? "runs here" : "is paused here"}: settling it with the destination`);
  const { ch, ready } = await connectWithBackoff(o, recording, status);
  try {
    if (ready.verified !== undefined) return await confirmMove(ctl, status, ready.verified, o, ch, vm);
    const canFinish = !!logPath && (ready.bulkOffset >= status.size || vm === "must-complete");
    if (!canFinish || vm === "runs-here") {
      if (vm === "must-complete")
        throw new HandoffError("the VM has left, and the destination cannot finish without the recording's log", { pastPointOfNoReturn: true, hint: "the source stays fenced; see the destination" });
      return await rollBack(ctl, o, ch, vm === "runs-here" ? "the VM runs here again" : ready.bulkOffset < status.size ? "the destination lacks part of the bulk copy" : "the recording's log is gone");
    }
    return await finish(ctl, status, logPath!, ready, o, ch, vm);
  } finally {
    ch.close();
  }
}

async function confirmMove(ctl: ControlClient, status: ServeStatus, theirs: string, o: RecoveryOptions, ch: Channel, vm: RecoveryState): Promise<RecoveryResult> {
  if (vm === "runs-here")
    throw new HandoffError("the VM runs here again, but the destination verified and released its copy", { pastPointOfNoReturn: true, hint: "stop one of them: the disk must not be written in two places" });
  const ours = imageDigest(servedImages(status), status.size);
  if (ours !== theirs)
    throw new HandoffError("the destination verified an image that differs from this one", { pastPointOfNoReturn: true, hint: "the source stays fenced; compare both images before running the VM anywhere" });
  if (vm === "can-roll-back") await o.hypervisor.complete();
  await ctl.stopRecording({ digest: ours, to: o.to });
  o.log.info(`the destination had verified the disk already (digest ${ours.slice(0, 16)}…): the move is complete`);
  return { outcome: "confirmed", finalDeltas: 0, bytesOnWire: ch.bytesSent, digest: ours };
}

async function rollBack(ctl: ControlClient, o: RecoveryOptions, ch: Channel, reason: string): Promise<never> {
  o.log.warn(`rolling the hand-off back: ${reason}`);
  await ch.send(msg.rollback(reason));
  for (;;) {
    const m = await ch.recv(60_000);
    if (m.type === MsgType.ROLLED_BACK) break;
    if (m.type !== MsgType.ACK && m.type !== MsgType.BASE_HASHES) throw new HandoffError(`expected ROLLED_BACK, got ${m.type}`, { pastPointOfNoReturn: true });
  }
  // The destination will never release this recording: the VM may run here again.
  await o.hypervisor.abort();
  await ctl.unfence(`hand-off rolled back with the destination: ${reason}`);
  await ctl.stopRecording();
  throw new RolledBack(reason);
}

async function finish(ctl: ControlClient, status: ServeStatus, logPath: string, ready: Ready, o: RecoveryOptions, ch: Channel, vm: RecoveryState): Promise<RecoveryResult> {
  const digests = new RegionDigests(status.size);
  const z = new Compressor(o.compress, ch);
  if (ready.bulkOffset < status.size) {
    // Only when the VM has gone (it cannot come back): the rest of the copy, while fenced.
    await sendBulk(ch, servedImages(status), { from: bulkResumeOffset(ready.bulkOffset, o.blockSize), blockSize: o.blockSize, compress: z, base: ready.base });
    await ch.send(msg.bulkEnd(status.size));
  }
  // Every delta from the destination's position: the log is sealed by the fence.
  // The image is fenced: WRITTEN records read it as it stays.
  const deltas = new DeltaStreamer(ch, logPath, { compress: z, from: BigInt(ready.nextSeq), image: servedImages(status) });
  try {
    await deltas.pump({ final: true });
    o.log.info(`finishing the hand-off: ${deltas.sent} deltas sent from ${ready.nextSeq}; the barrier goes out`);
    await ch.send(msg.barrier(deltas.lastSeq < BigInt(ready.nextSeq) ? BigInt(ready.nextSeq) - 1n : deltas.lastSeq, status.size, ""));
    digests.refresh(servedImages(status), { all: true });
    const digest = digests.digest();
    await ch.send(msg.checksum(digest));
    const done = await awaitDone(ch);
    if (done.digest !== digest) throw new HandoffError("the destination's image digest differs from the source's", { pastPointOfNoReturn: true });
    if (vm === "can-roll-back") await o.hypervisor.complete();
    await ctl.stopRecording({ digest, to: o.to });
    o.log.info("the hand-off is complete: the destination verified the disk and runs the VM");
    return { outcome: "completed", finalDeltas: deltas.sent, bytesOnWire: ch.bytesSent, digest };
  } finally {
    deltas.close();
  }
}
