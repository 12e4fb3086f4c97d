// The memory's last pass on slow links (issue 33). On the paper's WAN (5 Mbit/s) most of a
// VM's downtime is QEMU's last pass over memory: the pages dirtied since the pass before,
// sent whole. XBZRLE sends only what changed in a page it has sent before (a cache of
// pages already sent, at the source; the destination decodes without being asked), so a
// web server rewriting the same heap pages sends a fraction of them. It costs the source a
// copy of each cached page and a delta encode per resend: worth it where the link, not the
// CPU, is the bottleneck, which is what the measured link rate decides.
//
// Compressing the memory stream (multifd with zstd) would shrink the pages seen once too,
// but it needs the destination QEMU set up for it before its incoming migration starts,
// which is the operator's -incoming, not ours: not used.

/** Below this link rate (bytes/s) XBZRLE is turned on: 50 Mbit/s. */
export const XBZRLE_BELOW_BYTES_PER_SEC = 50e6 / 8;
/** QEMU's own default cache, and our floor. */
const MIN_CACHE = 64 * 1024 * 1024;
/** The cache holds what the guest dirties in this long: a pass on a slow link takes longer, the hot set is what recurs. */
const DIRTY_SPAN_S = 10;

export interface XbzrlePlan {
  cacheBytes: number;
  /** Why, for the log. */
  why: string;
}

/** A link this slow (bytes/s, as measured) makes XBZRLE worth its CPU. */
export function linkWantsXbzrle(bytesPerSec: number | undefined): bytesPerSec is number {
  return bytesPerSec !== undefined && bytesPerSec < XBZRLE_BELOW_BYTES_PER_SEC;
}

function pow2Floor(n: number): number {
  return 2 ** Math.floor(Math.log2(n));
}

/**
 * Whether to turn XBZRLE on for this migration, and its cache: what the guest dirties in
 * DIRTY_SPAN_S (QEMU's calc-dirty-rate), else a quarter of its RAM, within [64 MiB, RAM/2],
 * a power of two (QEMU 7.2 and older want one).
 */
export function xbzrlePlan(link: { bytesPerSec?: number }, guest: { ramBytes: number; dirtyBytesPerSec?: number }): XbzrlePlan | undefined {
  if (!linkWantsXbzrle(link.bytesPerSec)) return undefined;
  const want = guest.dirtyBytesPerSec !== undefined ? guest.dirtyBytesPerSec * DIRTY_SPAN_S : guest.ramBytes / 4;
  const ceiling = Math.max(MIN_CACHE, pow2Floor(guest.ramBytes / 2));
  const cacheBytes = Math.min(ceiling, Math.max(MIN_CACHE, 2 ** Math.ceil(Math.log2(Math.max(1, want)))));
  const mbit = ((link.bytesPerSec! * 8) / 1e6).toFixed(1);
  const dirty = guest.dirtyBytesPerSec !== undefined ? `the guest dirties ${(guest.dirtyBytesPerSec / 1048576).toFixed(1)} MiB/s` : "its dirty rate unknown";
  return { cacheBytes, why: `the link measures ${mbit} Mbit/s and ${dirty}: XBZRLE on, with a ${cacheBytes / 1048576} MiB cache` };
}
