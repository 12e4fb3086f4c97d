// The baseline the paper compares live migration with: stop the VM (with a hypervisor:
// stopped, then its memory copied in one pass), fence its disk, copy all of it, hand over,
// let the VM run there. The VM stays stopped for the memory and the whole disk: that is the
// downtime live migration avoids. The point of no return is the BARRIER (QEMU's: its
// continue): until then the destination cannot release anything, so a failure unfences the
// source and the VM carries on here.

import type { ControlClient } from "../../disk/service/control-client.ts";
import { offeredDisks, type ServeStatus, servedImages } from "../../disk/service/status.ts";
import { RegionDigests } from "../../disk/image/region-digest.ts";
import { HypervisorError } from "../../hypervisor/errors.ts";
import { NoSourceHypervisor } from "../../hypervisor/none.ts";
import type { SourceHypervisor } from "../../hypervisor/types.ts";
import type { Channel } from "../../net/channel.ts";
import { Compressor } from "../../net/compress.ts";
import { msg, type Ready } from "../../net/protocol.ts";
import type { Redirect } from "../../redirect/redirect.ts";
import { bulkResumeOffset } from "../base-hashes.ts";
import { sendBulk } from "../bulk.ts";
import { HandoffError } from "../errors.ts";
import { awaitDone } from "../handoff.ts";
import { sourceHandshake } from "../init.ts";
import { completeRedirect, setUpRedirect } from "../redirect.ts";
import { abortLive, type LiveStage } from "./abort.ts";
import { finish, NO_DELTAS } from "./metrics.ts";
import { phaseEvent, redirectEvents, type SourceOptions, type SourceResult } from "./options.ts";
import { sampleServe, wireCount } from "./sampler.ts";

type Sized = Pick<ServeStatus, "size" | "disks">;

export async function freezeAndCopy(ch: Channel, ctl: ControlClient, status: Sized, blockSize: number, o: SourceOptions, t0: number): Promise<SourceResult> {
  const hv = o.hypervisor ?? new NoSourceHypervisor();
  const stage: LiveStage = { recording: false, fenced: false, barrierSent: false, vmGone: false, phase: "init" };
  const enter = (phase: string) => {
    stage.phase = phase;
    phaseEvent(o, phase);
  };
  let redirect: Redirect | undefined;
  let sampler: { stop(): void } | undefined;
  try {
    // No delta log in this mode: nothing to resume against.
    const shookAt = performance.now();
    const ready = await sourceHandshake(ch, o.creds, { name: o.name, size: status.size, disks: offeredDisks(status), blockSize, recording: "" });
    const rttMs = (performance.now() - shookAt) / 2;
    await hv.prepare();
    if (o.redirect) {
      enter("redirect");
      redirect = await setUpRedirect(ch, o.redirect, { runDir: o.runDir, name: o.name }, o.log);
    }
    const pausedAt = await stopVm(hv, o, enter);
    stage.fenced = true;
    await ctl.fence({ reason: `freeze-and-copy to ${o.to ?? "the destination"}` });
    const fencedAt = performance.now();
    o.log.info("freeze-and-copy: source fenced; copying the whole image");
    enter("bulk");
    sampler = sampleServe(ctl, o.onEvent, wireCount(() => ch)); // the report's throughput
    const z = new Compressor(o.compress, ch, rttMs);
    const { bulk, digest } = await copyAll(ch, status, blockSize, z, ready);
    enter("handoff");
    o.log.info("point of no return: sending the barrier");
    stage.barrierSent = true;
    await ch.send(msg.barrier(0n, status.size, digest));
    const done = await awaitDone(ch);
    if (done.digest !== digest) throw new HandoffError("the destination's image digest differs from the source's", { pastPointOfNoReturn: true });
    const doneAt = performance.now();
    stage.vmGone = true;
    await hv.complete();
    const resumedAt = performance.now();
    if (redirect) await completeRedirect(redirect, o.redirect!, o.log, redirectEvents(o));
    await ctl.stopRecording({ digest, to: o.to });
    const metrics = finish(o, { t0, fencedAt, doneAt, pausedAt, resumedAt, bulk, compressors: [z], deltas: NO_DELTAS, finalDeltas: 0, bytesOnWire: ch.bytesSent, throttleSteps: 0, reconnects: 0 });
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

/** With a hypervisor: the VM stopped, then its memory copied in one pass. Returns when it paused. */
async function stopVm(hv: SourceHypervisor, o: SourceOptions, enter: (phase: string) => void): Promise<number | undefined> {
  if (hv.kind === "none") return undefined;
  enter("memory");
  const { pausedAt } = await hv.moveMemory(async () => undefined, { stopFirst: true });
  o.onEvent?.({ event: "paused", at: Math.round(Date.now() - (performance.now() - pausedAt)) });
  return pausedAt;
}

/** The whole image, fenced, and its digest. */
async function copyAll(ch: Channel, status: Sized, blockSize: number, z: Compressor, ready: Ready) {
  const digests = new RegionDigests(status.size);
  const images = servedImages(status);
  const bulk = await sendBulk(ch, images, {
    from: bulkResumeOffset(ready.bulkOffset, blockSize),
    blockSize,
    compress: z,
    base: ready.base,
    afterRead: (offset, chunk) => digests.noteData(offset, chunk),
  });
  // Fenced: nothing changed since the read; only regions a resumed copy skipped need reading.
  digests.refresh(images, { all: true });
  return { bulk, digest: digests.digest() };
}
