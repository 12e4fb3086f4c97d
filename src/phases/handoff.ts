// Phase 4, hand-off: the disk's part (the hypervisor's is in src/hypervisor/).
//
//   source                                   dest
//     drain deltas until the queue is small (catch-up.ts); the VM pauses (hypervisor)
//     ---- fence the source serve, durably, naming the recording ----
//     check the log against the serve's own count of writes; take its dirty map
//     read the log to its end, send the rest
//     ---- the point of no return with --hypervisor none: before the barrier, the
//          destination can release nothing, so a failure here still rolls back ----
//     BARRIER {lastSeq, size}  ------>  apply, fdatasync, rehash what the last deltas touched
//     rehash likewise; CHECKSUM ------>  compare the image digests
//                                      <-------  DONE {digest}: dest releases held I/O
//
// The digest is kept up to date region by region during the migration (region-digest.ts),
// so the check in the downtime reads only what the last deltas wrote.
//
// What a failure means is decided in source/live.ts, which knows where the point of no
// return lies for the hypervisor in use.

import type { ImageCheck } from "./catch-up.ts";
import type { ControlClient } from "../disk/service/control-client.ts";
import type { Channel } from "../net/channel.ts";
import { type Done, msg, MsgType, typeName } from "../net/protocol.ts";
import type { Logger } from "../log.ts";
import type { DeltaStreamer } from "./deltas.ts";
import { HandoffError } from "./errors.ts";
import type { RecordingWatch } from "./recording-watch.ts";
import { beforeKillPoint, killPoint } from "../util/kill-point.ts";

export interface HandoffTimes {
  fencedAt: number;
  doneAt: number;
  finalDeltas: number;
  /** The verified image digest (the source's record of the move keeps it). */
  digest: string;
  /** The storage downtime in its parts (ms): fence and last deltas; our digest; the destination's apply and verify. */
  parts: { fenceAndLastDeltasMs: number; digestMs: number; destinationMs: number };
}

/** Waits for DONE; ACKs that were in flight (the destination sends them periodically) are skipped. */
export async function awaitDone(ch: Channel): Promise<Done> {
  for (;;) {
    const m = await ch.recv(10 * 60 * 1000);
    if (m.type === MsgType.DONE) return m;
    if (m.type === MsgType.ACK) continue;
    throw new HandoffError(`expected DONE, got ${typeName(m.type)}`);
  }
}

/**
 * Fences the source, sends the last deltas and the barrier, and waits for the destination
 * to verify. Errors go up as they are: what a failure here means (abort safely, or an
 * unsafe state) depends on where the hypervisor's point of no return lies, which the
 * caller knows.
 */
export async function handOffStorage(
  ch: Channel,
  ctl: ControlClient,
  deltas: DeltaStreamer,
  check: ImageCheck,
  log: Logger,
  opts: { watch: RecordingWatch; to: string; barrierIsPointOfNoReturn: boolean; onBarrier: () => void },
): Promise<HandoffTimes> {
  const st = await ctl.status();
  if (st.recording.failed) throw new HandoffError(`record mode failed at the source: ${st.recording.failed}`);

  // Downtime is counted from before the request: the fence may apply before we hear back.
  const fencedAt = performance.now();
  const fenced = await ctl.fence({ recording: opts.watch.recording, reason: `hand-off of ${opts.watch.recording} to ${opts.to}` });
  log.info("source fenced (durably); every later write there is refused");
  killPoint("source-fenced");
  const rec = fenced.recording;
  if (rec.failed) throw new HandoffError(`record mode failed at the source: ${rec.failed}`);
  // No write can be applied any more: the serve's own count must be the log's (a write
  // across the bulk copy's cursor is two records).
  const expected = rec.applied + (rec.splits ?? 0);
  if (expected !== rec.records)
    throw new HandoffError(`the delta log holds ${rec.records} records, but the serve applied ${rec.applied} writes while recording (${rec.splits ?? 0} of them split at the bulk copy's cursor): ${Math.abs(expected - rec.records)} escaped the log`, {
      hint: "the migration is rolled back; report this as a bug",
    });
  opts.watch.apply(await ctl.dirty(opts.watch.recording));

  const before = deltas.sent;
  await deltas.pump({ final: true });
  const pumpedAt = performance.now();
  // The barrier goes first, without the digest, so the destination rehashes its regions
  // while we rehash ours: the verification costs one hash time of downtime, not two.
  opts.onBarrier();
  if (opts.barrierIsPointOfNoReturn) log.info("point of no return: the barrier goes out; the destination may release the disk once it has verified it");
  await ch.send(msg.barrier(deltas.lastSeq, st.size, ""));
  await beforeKillPoint("source-barrier");
  killPoint("source-barrier");
  check.digests.refresh(check.image, { all: true });
  const digest = check.digests.digest();
  await ch.send(msg.checksum(digest));
  await beforeKillPoint("source-done", 1000); // DONE arrives, unread
  killPoint("source-done");
  const hashedAt = performance.now();
  const done = await awaitDone(ch);
  if (done.digest !== digest) throw new HandoffError("the destination's image digest differs from the source's");
  const doneAt = performance.now();
  const ms = (a: number, b: number) => `${Math.round(b - a)} ms`;
  log.info(
    `hand-off: fence and last ${deltas.sent - before} deltas ${ms(fencedAt, pumpedAt)}, digest here ${ms(pumpedAt, hashedAt)}, ` +
      `until the destination verified ${ms(hashedAt, doneAt)}`,
  );
  return {
    fencedAt,
    doneAt,
    finalDeltas: deltas.sent - before,
    digest,
    parts: { fenceAndLastDeltasMs: Math.round(pumpedAt - fencedAt), digestMs: Math.round(hashedAt - pumpedAt), destinationMs: Math.round(doneAt - hashedAt) },
  };
}
