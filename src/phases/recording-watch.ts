// The source's hold on the recording it started: every control call names it, so a serve
// that lost it (a restart that could not go on with it, another recording) is caught
// before the point of no return; a serve that restarted and went on with it is followed.
// It also carries the serve's dirty map into the region digests: what the serve says it
// wrote is rehashed beside what the log says, so a write the log misses cannot pass.

import type { ControlClient, DirtySince } from "../disk/service/control-client.ts";
import { ControlError, ExitCode } from "../errors.ts";
import type { RegionDigests } from "../disk/image/region-digest.ts";
import type { Logger } from "../log.ts";
import { DeltasError } from "./errors.ts";

export class RecordingWatch {
  restarts = 0;

  constructor(
    readonly recording: string,
    private instance: string,
    private readonly digests: RegionDigests,
    private readonly log: Logger,
  ) {}

  /** Takes one answer of the serve (shipped, dirty): its recording, its instance, what it wrote. */
  apply(d: DirtySince): void {
    if (d.recording !== this.recording)
      throw new DeltasError(`the serve no longer records ${this.recording} (it records ${d.recording ?? "nothing"}): writes may have escaped the log`);
    if (d.instance !== this.instance) {
      this.restarts++;
      this.log.warn(`the serve restarted (instance ${this.instance.slice(0, 8)} -> ${d.instance.slice(0, 8)}) and went on with recording ${this.recording}; following it`);
      this.instance = d.instance;
    }
    for (const [first, count] of d.runs) this.digests.markDirty(first * d.pieceSize, count * d.pieceSize);
  }
}

/**
 * Tells the serve how far the source has shipped (and the VM's write allowance), and takes
 * its answer into the watch. A serve that answers it holds another recording, or none, had
 * a restart that could not go on with ours: writes since may be in no log, so the migration
 * aborts (the VM stays here).
 */
export async function reportShipped(ctl: ControlClient, watch: RecordingWatch, seq: bigint, rateCap: number | undefined) {
  const answer = await ctl.shipped(seq, watch.recording, rateCap).catch(recordingLost);
  watch.apply(answer);
  return answer;
}

/** Tells the serve the VM stopped at the source (its last writes go unthrottled); refused as reportShipped is. */
export async function reportStopped(ctl: ControlClient, watch: RecordingWatch): Promise<void> {
  await ctl.vmStopped(watch.recording).catch(recordingLost);
}

function recordingLost(err: Error): never {
  if (err instanceof ControlError && err.exitCode === ExitCode.badInput) throw new DeltasError(`the serve lost the recording: ${err.message}`);
  throw err;
}
