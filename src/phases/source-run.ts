// The source's whole migration, phase by phase, with the abort discipline:
// a failure before the point of no return stops recording and leaves the disk
// served and writable; after it, the disk stays fenced and the error says so.

import { ControlClient } from "../disk/control-client.ts";
import { controlSocketPath } from "../disk/disk-service.ts";
import type { Channel } from "../net/channel.ts";
import type { Logger } from "../log.ts";
import { sendBulk } from "./bulk.ts";
import { DeltaStreamer } from "./deltas.ts";
import { InitError, PhaseError } from "./errors.ts";
import { catchUp, handOffStorage } from "./handoff.ts";
import { type Credentials, sourceHandshake } from "./init.ts";

export interface SourceOptions {
  name: string;
  runDir: string;
  connect: () => Promise<Channel>;
  creds: Credentials;
  blockSize?: number;
  compress: boolean;
  log: Logger;
  onEvent?: (e: Record<string, unknown>) => void;
}

export interface MigrationMetrics {
  migrationTimeMs: number;
  storageDowntimeMs: number;
  bulkBytes: number;
  bulkWireBytes: number;
  bulkZeroBlocks: number;
  deltaCount: number;
  deltaBytes: number;
  deltaWireBytes: number;
  finalDeltas: number;
  bytesOnWire: number;
  deltaRatePerSec: number;
  throttleSteps: number;
}

export async function runSource(o: SourceOptions): Promise<MigrationMetrics> {
  const t0 = performance.now();
  const ctl = new ControlClient(controlSocketPath(o.runDir, o.name));
  const emit = (phase: string, extra: Record<string, unknown> = {}) => o.onEvent?.({ event: "phase", phase, ...extra });
  let status;
  try {
    status = await ctl.status();
  } catch (cause) {
    throw new InitError(`no local serve named ${o.name}`, { cause, hint: `start it with: wanmig serve --name ${o.name} --image PATH` });
  }
  if (status.mode === "fenced") throw new InitError(`${o.name} is fenced here: it has already moved away`);
  const blockSize = o.blockSize ?? 64 * 1024;

  emit("init");
  let ch: Channel;
  try {
    ch = await o.connect();
  } catch (cause) {
    throw new InitError("cannot connect to the destination", { cause });
  }
  let recording = false;
  let fenced = false;
  let deltas: DeltaStreamer | undefined;
  try {
    const ready = await sourceHandshake(ch, o.creds, { name: o.name, size: status.size, blockSize });
    // Record mode starts before the first bulk byte is read, so no write can be missed.
    const rec = await ctl.startRecording();
    recording = true;
    o.log.info(`authenticated; recording into ${rec.path}`);

    emit("bulk");
    const bulk = await sendBulk(ch, status.image, {
      from: ready.bulkOffset,
      blockSize,
      compress: o.compress,
      onProgress: (p) => o.onEvent?.({ event: "progress", phase: "bulk", offset: p.offset, size: p.size, bytesSent: p.bytesSent }),
    });
    o.log.info(`bulk copy done: ${bulk.dataBlocks} blocks sent, ${bulk.zeroBlocks} zero blocks skipped`);

    emit("deltas");
    deltas = new DeltaStreamer(ch, rec.path!, o.compress);
    await catchUp(ctl, deltas, o.log);

    emit("handoff");
    fenced = true; // from inside handOffStorage on, the fence may already be up
    const h = await handOffStorage(ch, ctl, deltas, status.image, o.log);
    const end = await ctl.status();
    await ctl.stopRecording();
    recording = false;
    const migrationTimeMs = performance.now() - t0;
    const metrics: MigrationMetrics = {
      migrationTimeMs: Math.round(migrationTimeMs),
      storageDowntimeMs: Math.round(h.doneAt - h.fencedAt),
      bulkBytes: bulk.bytesSent,
      bulkWireBytes: bulk.wireBytes,
      bulkZeroBlocks: bulk.zeroBlocks,
      deltaCount: deltas.sent,
      deltaBytes: deltas.bytes,
      deltaWireBytes: deltas.wireBytes,
      finalDeltas: h.finalDeltas,
      bytesOnWire: ch.bytesSent,
      deltaRatePerSec: Math.round((deltas.sent / migrationTimeMs) * 1000),
      throttleSteps: end.throttle.level,
    };
    o.onEvent?.({ event: "done", ...metrics });
    return metrics;
  } catch (err) {
    if (recording) await ctl.stopRecording().catch(() => undefined);
    const st = await ctl.status().catch(() => undefined);
    if (fenced && st?.fence.fenced) {
      if (err instanceof PhaseError && err.exitCode === 6) throw err;
      throw new PhaseError("hand-off", "failed after the point of no return", { cause: err, pastPointOfNoReturn: true });
    }
    throw err instanceof PhaseError ? err : new PhaseError("migration", "aborted before the point of no return; the VM's disk is still served here, writable", { cause: err });
  } finally {
    deltas?.close();
    ch.close();
  }
}
