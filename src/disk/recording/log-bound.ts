// How large a delta log may grow (issue 12). A log that fills its file system would fail
// the VM's own writes if the image lives there too, and a migration must never do that.
// So the log gets at most a share of the space free when recording starts, after setting
// aside what the image may still need to grow (a sparse image's unallocated part), and
// never more than the operator's --max-log-size. The serve ends recording at the bound (the
// VM's writes go on, to the image only) and the migrating source aborts cleanly.
// An overcommitted thin image (one that could grow past what is free) can fill its file
// system by itself, whatever the log does; setting all of its growth aside gave such a disk
// a bound of 0 bytes, and no migration at all. Its reserve is capped at half the free space,
// so the log gets at least a quarter of it.

import { statfsSync, statSync } from "node:fs";

/** The log's share of the free space (after the image's reserve). */
export const LOG_SHARE_OF_FREE = 0.5;

export interface LogBound {
  bytes: number;
  /** How it was set, for the log line. */
  why: string;
}

export function logBound(opts: { logDir: string; images: readonly string[]; requested?: number; alreadyBytes?: number }): LogBound {
  const fs = statfsSync(opts.logDir);
  const free = fs.bavail * fs.bsize;
  let reserve = 0;
  for (const image of opts.images) {
    try {
      const img = statSync(image);
      if (img.dev === statSync(opts.logDir).dev) reserve += Math.max(0, img.size - img.blocks * 512);
    } catch {
      // A block device or an image elsewhere: nothing of its growth to set aside here.
    }
  }
  const kept = Math.min(reserve, Math.floor(free / 2));
  const share = Math.floor(LOG_SHARE_OF_FREE * (free - kept)) + (opts.alreadyBytes ?? 0);
  const overcommitted = reserve > kept ? ` (it could grow by ${fmt(reserve)}: more than is free)` : "";
  const why = `${Math.round(LOG_SHARE_OF_FREE * 100)} % of the ${fmt(free)} free in ${opts.logDir}${kept ? `, after ${fmt(kept)} kept for the image to grow${overcommitted}` : ""}`;
  if (opts.requested !== undefined && opts.requested < share) return { bytes: opts.requested, why: "--max-log-size" };
  return { bytes: share, why };
}

function fmt(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}
