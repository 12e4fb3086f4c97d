// A budget shared by the moves of a group (`--group` with `--bandwidth`): each takes an equal
// part of it, re-read as moves start and end sending. The kernel does not share it for us:
// a tc class per move would need root, the uplink's name, and a daemon to clean up after a
// killed move; the group's locks need none of that and vanish with the process.
//
// Equal parts, not by demand: a move in its hand-off sends little, and for that second its
// part goes unused. A move counts as sending only from its connection to its end, so one
// still in its pre-flight over ssh takes nothing from the others.

import type { TokenBucket } from "./rate.ts";

export const SHARE_POLL_MS = 250;

/** Each sender's part of the budget. */
export function shareOf(budgetBytesPerSec: number, senders: number): number {
  return budgetBytesPerSec / Math.max(1, senders);
}

/** Keeps `bucket` at this move's part of the budget until stopped. */
export function followShare(bucket: TokenBucket, budgetBytesPerSec: number, senders: () => number): { stop(): void } {
  const apply = () => bucket.setRate(shareOf(budgetBytesPerSec, senders()));
  apply();
  const timer = setInterval(apply, SHARE_POLL_MS);
  return { stop: () => clearInterval(timer) };
}
