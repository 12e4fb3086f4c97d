// The report's curves: the serve's delta queue, the writes it holds, its throttle and write
// cap, and the wire's bytes, sampled.

import { ControlClient } from "../../disk/service/control-client.ts";
import type { Channel } from "../../net/channel.ts";

/**
 * Every 250 ms while recording (freeze-and-copy: from its bulk copy on): the serve's delta
 * queue and throttle level, and the bytes handed to the link so far, as "sample" events
 * (the report's curves: the queue and the throttle, which the bulk phase would not show
 * otherwise, deltas being shipped after it; and the throughput). The throughput is the
 * wire's (after compression, after --bandwidth), read on this clock: the bulk's progress
 * counts a whole 4 MiB chunk of image bytes, before compression, when it is queued, which
 * drew 16 MiB/s and 0 in turn and peaks of compressible data far above the link.
 */
export function sampleServe(retrying: ControlClient, onEvent?: (e: Record<string, unknown>) => void, link?: () => { wireBytes: number; linkBytesPerSec?: number }): { stop(): void } {
  if (!onEvent) return { stop() {} };
  // A sample missed while the serve restarts is only a gap in the curve: no retries piling up.
  const ctl = new ControlClient(retrying.socketPath);
  const timer = setInterval(() => {
    // Stamped at the tick, with the link's count then, not when the serve answers.
    const at = Date.now();
    const wire = link?.();
    ctl.status().then(
      (st) =>
        onEvent({
          event: "sample",
          at,
          ...wire,
          deltaQueue: st.throttle.deltaQueue,
          // The writes the cap holds back, beside the queue: they are not in it yet.
          heldWrites: st.throttle.queueLength,
          heldBytes: st.throttle.heldBytes,
          throttleLevel: st.throttle.level,
          // The write cap in force (the bulk throttle's or the catch-up's), 0 for none: the paper policy's level above reads 0 under it.
          rateCap: st.throttle.rateCapBytesPerSec ?? 0,
          recordedDeltas: st.recording.records,
        }),
      () => wire && onEvent({ event: "sample", at, ...wire }),
    );
  }, 250);
  return { stop: () => clearInterval(timer) };
}

/** Wire bytes handed to the link so far, over every connection `current` has been (a resume opens another). */
export function wireCount(current: () => Channel | undefined): () => { wireBytes: number; linkBytesPerSec?: number } {
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

